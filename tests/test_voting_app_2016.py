"""The voting app's 2016 front ends (``--style 2016``), run unchanged, in cgi and warm modes.

vote is a Flask app under CGI that fires its record task with ``dockerrun`` (``run(...,
detach=True, network_mode=...)``) and exits at once; result is a Perl CGI script whose page
polls the absolute path ``/result/votes``. Both are served at their own routes. What is
proven here: a browser (Debian's chromium, Playwright) votes and sees the result page move
off 50/50 in both modes; every vote reaches PostgreSQL in both modes (the task outlives the
CGI page that fired it); and a task killed at ``children_timeout`` shows on the vote call's
record. One gateway and one database for the module (``swarmless-test-vote16-<session>``,
labelled with the session, removed at the end).
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from tests.conftest import SESSION
from tests.gateway_harness import RunningGateway
from tests.test_voting_app import browser  # noqa: F401  (chromium, through Playwright)
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples" / "voting-app"))

import votingapp as app  # noqa: E402

OUT = ROOT / "test-output" / "voting-app-2016"
pytestmark = pytest.mark.slow


@dataclasses.dataclass
class Stack:
    gw: RunningGateway
    names: app.Names
    images: app.Images
    db: app.Database

    def deploy(self, mode: str, **kwargs: Any) -> None:
        wanted = app.specs(
            self.images,
            self.db,
            mode=mode,
            style="2016",
            network=self.names.network,
            **kwargs,
        )
        client = self.gw.client()
        try:
            app.deploy(client, wanted)
        finally:
            client.close()

    def sql(self, engine: docker.DockerClient, query: str) -> str:
        code, out = engine.containers.get(self.names.db).exec_run(
            ["psql", "-h", "/tmp", "-U", "postgres", "-d", "votes", "-tAc", query]
        )
        assert code == 0, out
        return str(out.decode().strip())


@pytest.fixture(scope="module")
def stack(
    engine: docker.DockerClient,
    labels: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    names = app.Names(f"swarmless-test-vote16-{SESSION}")
    own = {**labels, "swarmless.test-stack": names.prefix}
    images = app.build_images(engine, style="2016")
    gw: RunningGateway | None = None
    try:
        app.ensure_network(engine, names.network, own)
        db = app.start_database(
            engine,
            image=images.postgres,
            names=names,
            password="test",
            labels=own,
            args=("-c", "fsync=off"),
        )
        gw = RunningGateway(tmp_path_factory.mktemp("gw-vote16"), labels, network=names.network)
        gw.start()
        yield Stack(gw=gw, names=names, images=images, db=db)
    finally:
        if gw is not None:
            gw.stop(engine)
        app.remove_all(engine, names, proof=own)


def _vote(http: httpx.Client, choice: str) -> str:
    """One vote from a new voter over HTTP; its voter id."""
    http.cookies.clear()
    r = http.post("/vote/", data={"vote": choice})
    assert r.status_code == 200, r.text
    assert "You voted for" in r.text, r.text
    return str(r.cookies["voter_id"])


@pytest.mark.parametrize("mode", ["cgi", "warm"])
def test_every_vote_reaches_postgres(stack: Stack, engine: docker.DockerClient, mode: str) -> None:
    stack.deploy(mode)
    with httpx.Client(base_url=stack.gw.url, timeout=60) as http:
        r = http.get("/vote/")
        assert r.status_code == 200, r.text
        assert 'action="/vote/"' in r.text  # url_for under the route's SCRIPT_NAME
        voters = {_vote(http, choice): choice for choice in "abab"}
        wanted = ",".join(f"{v}={c}" for v, c in sorted(voters.items()))
        ids = "', '".join(voters)
        query = (
            "SELECT string_agg(voter_id || '=' || vote, ',' ORDER BY voter_id) FROM votes "
            f"WHERE voter_id IN ('{ids}')"
        )
        wait_until(
            lambda: stack.sql(engine, query) == wanted, 60, f"the {mode} votes in PostgreSQL"
        )
        counts = http.get("/result/votes").json()
        assert counts["total"] == int(stack.sql(engine, "SELECT count(*) FROM votes"))
    if mode == "cgi":  # each vote call's record shows its task ending well
        client = stack.gw.client()
        try:

            def ended() -> Any:
                with stack.gw.http() as admin:
                    recs = admin.get("/invocations", params={"function": "vote"}).json()
                posts = [r for r in recs if r["detached"]]
                return posts if len(posts) >= len(voters) else None

            posts = wait_until(ended, 60, "the tasks' ends on the vote records")
            for rec in posts:
                assert rec["status"] == "succeeded", rec
                assert [(c["exit_code"], c["killed"]) for c in rec["detached"]] == [(0, False)]
        finally:
            client.close()


def _paused(container: Any) -> bool:
    """Pause ``container``; False when runc could not freeze it this time."""
    try:
        container.pause()
    except docker.errors.APIError as e:
        if "unable to freeze" not in str(e):
            raise
        return False
    return True


def test_a_task_killed_at_children_timeout_shows_on_the_vote_record(
    stack: Stack, engine: docker.DockerClient
) -> None:
    stack.deploy("cgi", children_timeout=1)
    db = engine.containers.get(stack.names.db)
    # The task's connection hangs: it is still running when its time is up. On a busy
    # machine runc may fail to freeze the cgroup at once ("unable to freeze"): ask again.
    wait_until(lambda: _paused(db), 60, "the database container paused")
    try:
        with httpx.Client(base_url=stack.gw.url, timeout=60) as http:
            http.cookies.clear()
            r = http.post("/vote/", data={"vote": "a"})
        assert r.status_code == 200, r.text  # the page answered: the task was fired
        call_id = r.headers["x-call-id"]

        def killed() -> Any:
            with stack.gw.http() as admin:
                rec = admin.get(f"/invocations/{call_id}").json()
            return rec if rec.get("detached") else None

        rec = wait_until(killed, 60, "the killed task on the vote's record")
    finally:
        db.unpause()
        stack.deploy("cgi")
    (task,) = rec["detached"]
    assert task["killed"] is True
    assert task["exit_code"] == 137
    assert "still running 1s after its caller exited (children_timeout): killed" in rec["error"]


@pytest.mark.browser
@pytest.mark.parametrize("mode", ["cgi", "warm"])
def test_a_browser_votes_and_the_result_moves(
    stack: Stack,
    engine: docker.DockerClient,
    browser: Any,  # noqa: F811
    mode: str,
) -> None:
    from playwright.sync_api import expect

    stack.deploy(mode)
    OUT.mkdir(parents=True, exist_ok=True)
    before = int(stack.sql(engine, "SELECT count(*) FROM votes"))
    results_ctx, voter_ctx = browser.new_context(), browser.new_context()
    try:
        results = results_ctx.new_page()
        results.goto(f"{stack.gw.url}/result/")
        expect(results.locator("#container")).to_have_text(re.compile(r"^[0-9a-f]{12}$"))
        shown = int(results.locator("#total").inner_text())
        assert shown == before
        ballot = voter_ctx.new_page()
        ballot.goto(f"{stack.gw.url}/vote/")
        ballot.click("button#a")
        expect(ballot.locator("#message")).to_contain_text("You voted for Cats (task ")
        expect(ballot.locator("button#a")).to_have_class("chosen")
        ballot.screenshot(path=str(OUT / f"vote-{mode}.png"))
        expect(results.locator("#total")).to_have_text(str(before + 1), timeout=30_000)
        got = stack.sql(engine, "SELECT count(*) FILTER (WHERE vote = 'a'), count(*) FROM votes")
        cats, total = map(int, got.split("|"))
        percent = round(100 * cats / total)
        # Not the page's 50/50 placeholder: the numbers the poll of /result/votes brought.
        expect(results.locator("#a-percent")).to_have_text(f"{percent}%")
        expect(results.locator("#b-percent")).to_have_text(f"{100 - percent}%")
        results.screenshot(path=str(OUT / f"result-{mode}.png"))
    finally:
        results_ctx.close()
        voter_ctx.close()
