#!/usr/bin/perl
# result, written the 2016 way: a CGI script (Perl, CGI.pm and DBI) for the web root.
#
#   GET /        the page; it polls the absolute path /result/votes every second
#   GET /votes   {"a": N, "b": M, "total": N+M, "container": "<hostname>"} from PostgreSQL
#
# The poll's path is absolute, as pages written for a server of their own have them: it
# works because the function is served at its own route (routes: ["/result"]). Run per
# request (mode: cgi, perl /function/result.cgi) or forked per call by a warm container
# (mode: warm, handler_kind: cgi). The database is DATABASE_URL (postgresql://...).
use strict;
use warnings;

use CGI;
use DBI;
use JSON::PP;
use Sys::Hostname;

my $q = CGI->new;
my $path = $ENV{PATH_INFO} // '';
my $a_label = $ENV{OPTION_A} // 'Cats';
my $b_label = $ENV{OPTION_B} // 'Dogs';

sub counts {
    my ($user, $password, $host, $port, $db) = ($ENV{DATABASE_URL} // '')
      =~ m{^postgres(?:ql)?://([^:@/]*)(?::([^@/]*))?@([^:/]+)(?::(\d+))?/([\w-]+)}
      or die "DATABASE_URL is not a postgresql:// URL\n";
    my $dsn = "dbi:Pg:dbname=$db;host=$host;port=" . ($port || 5432) . ";connect_timeout=3";
    my $dbh = DBI->connect($dsn, $user, $password, {RaiseError => 1, PrintError => 0});
    my %votes = (a => 0, b => 0);
    for my $row (@{$dbh->selectall_arrayref('SELECT vote, count(*) FROM votes GROUP BY vote')}) {
        $votes{$row->[0]} = $row->[1] + 0 if exists $votes{$row->[0]};
    }
    $dbh->disconnect;
    return \%votes;
}

if ($path eq '/votes') {
    my $votes = eval { counts() };
    if (!$votes) {
        (my $why = $@ || 'unknown error') =~ s/\s+/ /g;
        print $q->header(
            -status => '503 Service Unavailable', -type => 'application/json', -charset => 'utf-8'
        );
        print encode_json({error => "the database did not answer: $why"});
        exit 0;
    }
    my %json = (-type => 'application/json', -charset => 'utf-8', -Cache_Control => 'no-store');
    print $q->header(%json);
    print encode_json({%$votes, total => $votes->{a} + $votes->{b}, container => hostname()});
    exit 0;
}

if ($path ne '' && $path ne '/') {
    print $q->header(-status => '404 Not Found', -type => 'text/plain'), "not found\n";
    exit 0;
}

print $q->header(-type => 'text/html', -charset => 'utf-8', -Cache_Control => 'no-store');
my ($la, $lb) = map { $q->escapeHTML($_) } ($a_label, $b_label);
print <<"PAGE";
<!doctype html>
<html><head><meta charset="utf-8"><title>$la vs $lb: results</title>
<style>
body{font-family:sans-serif;background:#f4f4f4;text-align:center;color:#333}
main{max-width:32em;margin:3em auto;background:#fff;padding:2em;border-radius:8px}
.row{display:flex;height:4em;border-radius:6px;overflow:hidden}
.bar{display:flex;align-items:center;justify-content:center;color:#fff;font-size:1.4em;
 min-width:3.5em;transition:flex-grow .4s}
#bar-a{background:#2196f3} #bar-b{background:#00cbca}
</style></head>
<body><main>
<h1>$la vs $lb</h1>
<div class="row">
<div class="bar" id="bar-a" style="flex-grow:1"><span id="a-percent">50%</span></div>
<div class="bar" id="bar-b" style="flex-grow:1"><span id="b-percent">50%</span></div></div>
<p><span id="total">0</span> votes</p>
<p><small>Numbers served by container <span id="container">-</span></small></p>
</main>
<script>
function poll() {
  fetch("/result/votes", {cache: "no-store"})
    .then(function (r) { return r.json(); })
    .then(function (d) {
      if (d.error) { throw new Error(d.error); }
      var a = d.total ? Math.round(100 * d.a / d.total) : 50;
      document.getElementById("a-percent").textContent = a + "%";
      document.getElementById("b-percent").textContent = (100 - a) + "%";
      document.getElementById("bar-a").style.flexGrow = Math.max(a, 1);
      document.getElementById("bar-b").style.flexGrow = Math.max(100 - a, 1);
      document.getElementById("total").textContent = d.total;
      document.getElementById("container").textContent = d.container;
    })
    .catch(function () {})
    .then(function () { setTimeout(poll, 1000); });
}
poll();
</script>
</body></html>
PAGE
