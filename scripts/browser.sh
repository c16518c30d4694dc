#!/usr/bin/env bash
# Debian's chromium for the browser tests: prints its path on stdout.
#
#   scripts/browser.sh      ensure /usr/bin/chromium exists (apt-get install chromium when
#                           it is absent, as root), then print its path
#
# Playwright drives this browser through executable_path; `playwright install` (a browser
# download from a CDN) is never needed. Idempotent; messages go to stderr, so
# `path=$(scripts/browser.sh)` works. The install log is /var/log/swarmless-apt-chromium.log.
set -euo pipefail

BROWSER=${SWARMLESS_CHROMIUM:-/usr/bin/chromium}
LOG=/var/log/swarmless-apt-chromium.log
LOCK=/var/lock/swarmless-apt-chromium.lock

say() { printf 'browser: %s\n' "$*" >&2; }

if [ ! -x "$BROWSER" ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    say "$BROWSER is missing, and installing it needs root and apt-get"
    say "fix: sudo apt-get install -y chromium"
    exit 1
  fi
  # Two test sessions may ask at once: one installs, the other waits for it (bounded).
  exec 9>"$LOCK"
  flock -w 900 9 || { say "another install of chromium holds $LOCK for 15 minutes"; exit 1; }
  if [ ! -x "$BROWSER" ]; then
    say "installing chromium from Debian (log: $LOG)"
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends chromium fonts-liberation; } >"$LOG" 2>&1 \
      || { say "apt-get install chromium failed; see $LOG"; tail -n 5 "$LOG" >&2; exit 1; }
  fi
  [ -x "$BROWSER" ] || { say "chromium installed but $BROWSER is not there"; exit 1; }
fi
echo "$BROWSER"
