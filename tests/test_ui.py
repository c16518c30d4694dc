"""The dashboard (/ui) in a real browser against a real gateway with real containers.

Debian's chromium driven by Playwright (``scripts/browser.sh`` installs it when it is absent;
no browser download). One gateway for the module, its functions named ``ui-*``; screenshots
at 1280x800 and at phone width go to ``test-output/ui/``.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from tests.conftest import BUSYBOX, handler_image
from tests.gateway_harness import TOKEN, RunningGateway

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "test-output" / "ui"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
HANDLERS = """
import sys, time

def handle(event, context):
    time.sleep(float(event["body"] or b"0"))
    print("slept", event["body"].decode(), "in", context.call_id)
    print("warm and well", file=sys.stderr)
    return {"slept": event["body"].decode()}
"""

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def gw(
    engine: docker.DockerClient, labels: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    # The loopback is a trusted proxy here: X-Forwarded-Proto: https makes cookies Secure.
    g = RunningGateway(
        tmp_path_factory.mktemp("gw-ui"), labels, trusted_proxies=("127.0.0.1/32",)
    ).start()
    yield g
    g.stop(engine)


@pytest.fixture(scope="module")
def warm_image(build_image: Callable[..., str]) -> str:
    return handler_image(build_image, "ui-warm", HANDLERS)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    found = subprocess.run(
        ["bash", str(ROOT / "scripts" / "browser.sh")], capture_output=True, text=True
    )
    if found.returncode != 0:
        pytest.fail(f"no chromium for the browser test: {found.stderr.strip()}")
    from playwright.sync_api import sync_playwright

    OUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=found.stdout.strip(), args=CHROMIUM_ARGS)
        yield b
        b.close()


def log_in(browser: Any, gw: RunningGateway, viewport: dict[str, int] = DESKTOP) -> Any:
    """A new browser context (its own cookies) logged in to the dashboard; its page."""
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    page.goto(f"{gw.url}/ui/")
    page.fill("#token", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url(f"{gw.url}/ui/")
    return page


def deploy(gw: RunningGateway, spec: dict[str, Any]) -> None:
    with gw.http() as http:
        r = http.post("/system/functions", json=spec)
        assert r.status_code in (200, 201), r.text


def wait_for(
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    pause: Callable[[float], object] = time.sleep,
) -> Any:
    """``predicate``'s value once it is truthy; ``pause(seconds)`` between two asks (a page's
    ``wait_for_timeout`` where Playwright must run meanwhile: it calls routes' handlers and
    bindings only during one of its own calls)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        pause(0.2)


def test_unauthenticated_ui_goes_to_the_login_form(gw: RunningGateway, browser: Any) -> None:
    from playwright.sync_api import expect

    with httpx.Client(base_url=gw.url, timeout=30) as http:
        assert http.get("/").headers["location"] == "/ui/"
        for path in ("/ui", "/ui/", "/ui/invocations?status=dead", "/ui/cluster"):
            r = http.get(path)
            assert r.status_code == 303, (path, r.text)
            assert r.headers["location"].startswith("/ui/login?next=%2Fui")
        assert http.get("/ui/events").status_code == 303
        r = http.post("/ui/deploy", data={"spec": "name: x"})
        assert r.status_code == 403  # no session: refused, nothing deployed
    context = browser.new_context(viewport=DESKTOP)
    try:
        page = context.new_page()
        page.goto(f"{gw.url}/ui/invocations")
        expect(page).to_have_url(re.compile(r"/ui/login\?next=%2Fui%2Finvocations$"))
        page.fill("#token", "not-the-token")
        page.click("button[type=submit]")
        expect(page.locator("#login-error")).to_contain_text("not this gateway's admin token")
        page.screenshot(path=str(OUT / "login-refused.png"))
        page.fill("#token", TOKEN)
        page.click("button[type=submit]")
        expect(page).to_have_url(f"{gw.url}/ui/invocations")  # where it was going
        cookies = {c["name"]: c for c in context.cookies()}
        session = cookies["swarmless_ui"]
        assert session["httpOnly"]
        assert session["sameSite"] == "Strict"
        assert not session["secure"]  # plain http: a Secure cookie would never come back
        assert TOKEN not in session["value"]
        assert TOKEN not in page.content()
    finally:
        context.close()


def test_secure_cookie_behind_a_trusted_https_proxy(gw: RunningGateway) -> None:
    with httpx.Client(base_url=gw.url, timeout=30) as http:
        form = http.get("/ui/login", headers={"x-forwarded-proto": "https"})
        assert "Secure" in form.headers["set-cookie"]
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert csrf is not None
        nonce = form.cookies["swarmless_ui_login"]
        http.cookies.clear()  # a Secure cookie: sent by hand (this client speaks http)
        r = http.post(
            "/ui/login",
            data={"csrf": csrf.group(1), "token": TOKEN, "next": "https://evil.example/"},
            headers={"x-forwarded-proto": "https", "cookie": f"swarmless_ui_login={nonce}"},
        )
        assert r.status_code == 303
        assert r.headers["location"] == "/ui/"  # never another site
        session = [c for c in r.headers.get_list("set-cookie") if c.startswith("swarmless_ui=")]
        assert session
        assert "Secure" in session[0]
        assert "HttpOnly" in session[0]
        assert "SameSite=strict" in session[0]


def test_deploy_invoke_and_watch_the_call_arrive_with_its_logs(
    gw: RunningGateway, browser: Any
) -> None:
    from playwright.sync_api import expect

    page = log_in(browser, gw)
    try:
        expect(page.locator("#empty")).to_contain_text("No functions yet")
        page.screenshot(path=str(OUT / "empty-1280.png"))
        # Another tab watches the invocations list live while the first one deploys.
        watcher = page.context.new_page()
        watcher.goto(f"{gw.url}/ui/invocations")
        expect(watcher.locator("#live")).to_be_visible()
        spec = (
            "name: ui-shout\n"
            f"image: {BUSYBOX}\n"
            "mode: oneshot\n"
            "command: [sh, -c, 'echo shouting >&2; tr a-z A-Z']\n"
        )
        page.fill("#spec", spec)
        page.click("#deploy button[type=submit]")
        expect(page).to_have_url(f"{gw.url}/ui/functions/ui-shout?done=deployed")
        expect(page.locator("h1")).to_have_text("ui-shout")
        expect(page.locator(".flash")).to_have_text("Deployed.")
        page.fill("#body", "hello from the dashboard")
        page.click("#invoke button[type=submit]")
        expect(page.locator("#answer-body")).to_have_text("HELLO FROM THE DASHBOARD")
        call_id = page.locator("#answer-call").inner_text()
        # The call shows up in the other tab without a reload (Server-Sent Events).
        row = watcher.locator(f'#rows tr[data-id="{call_id}"]')
        expect(row).to_be_visible(timeout=15_000)
        expect(row.locator(".badge")).to_have_text("succeeded")
        watcher.screenshot(path=str(OUT / "invocations-1280.png"))
        row.locator("a[data-row]").click()
        expect(watcher.locator("#stdout")).to_have_text("HELLO FROM THE DASHBOARD")
        expect(watcher.locator("#stderr")).to_contain_text("shouting")
        expect(watcher.locator("#exit-code")).to_have_text("0")
        expect(watcher.locator("svg.waterfall rect").first).to_be_visible()
        watcher.screenshot(path=str(OUT / "invocation-1280.png"))
        # A spec with a mistake: the form keeps it and names the field.
        page.goto(f"{gw.url}/ui/")
        page.fill("#spec", "name: ui-bad\nimage: x\nmode: lukewarm\n")
        page.click("#deploy button[type=submit]")
        expect(page.locator("#deploy-error")).to_contain_text("mode")
        expect(page.locator("#spec")).to_have_value("name: ui-bad\nimage: x\nmode: lukewarm\n")
        for p in (page, watcher):
            assert TOKEN not in p.content()
    finally:
        page.context.close()


# Reports each "counts" event the page's own EventSources receive to the test, through a
# binding (test only: the page's script is unchanged; a listener added first runs first, on
# the same event; the page's state cannot be read while a navigation is pending, a binding
# still calls out).
COUNTS_SEEN = """
(() => {
  const Original = window.EventSource;
  window.EventSource = function (url, options) {
    const source = new Original(url, options);
    source.addEventListener("counts", (e) => window.__countsSeen(JSON.parse(e.data).functions));
    return source;
  };
})();
"""


def test_a_submitted_deploy_is_not_cancelled_by_the_lists_live_reload(
    gw: RunningGateway, browser: Any
) -> None:
    """The functions list reloads itself when the set of functions changes. A deploy changes
    it: the reload raced the deploy's redirect and won (the page ended on the list, not on
    the new function). Here the deploy's request is held until the page has seen the list
    change (another function deployed meanwhile); then the redirect must still arrive."""
    from playwright.sync_api import expect

    page = log_in(browser, gw)
    seen: list[list[str]] = []
    held: list[Any] = []

    def pumped(seconds: float) -> None:
        page.wait_for_timeout(seconds * 1000)

    try:
        page.expose_function("__countsSeen", lambda names: seen.append(names))
        page.add_init_script(COUNTS_SEEN)
        page.goto(f"{gw.url}/ui/")
        wait_for(lambda: seen, 30, "the list's first counts", pumped)
        page.route(f"{gw.url}/ui/deploy", lambda route: held.append(route))
        page.fill("#spec", f"name: ui-held\nimage: {BUSYBOX}\nmode: oneshot\ncommand: [cat]\n")
        page.click("#deploy button[type=submit]", no_wait_after=True)
        wait_for(lambda: held, 30, "the deploy's request to be held", pumped)
        deploy(gw, {"name": "ui-other", "image": BUSYBOX, "mode": "oneshot", "command": ["cat"]})
        # The page's own listener ran right after the one that reported this event.
        wait_for(lambda: any("ui-other" in n for n in seen), 30, "the change", pumped)
        held[0].continue_()
        expect(page).to_have_url(f"{gw.url}/ui/functions/ui-held?done=deployed")
        expect(page.locator(".flash")).to_have_text("Deployed.")
    finally:
        page.context.close()
        with gw.http() as http:
            for name in ("ui-held", "ui-other"):
                http.delete(f"/system/functions/{name}")


def test_containers_scale_while_load_runs(
    gw: RunningGateway, browser: Any, warm_image: str
) -> None:
    from playwright.sync_api import expect

    deploy(
        gw,
        {
            "name": "ui-load",
            "image": warm_image,
            "mode": "warm",
            "handler": "handler:handle",
            "concurrency": 1,
            "max_containers": 4,
            "idle_timeout": 60,
        },
    )
    page = log_in(browser, gw)
    stop = threading.Event()
    done: list[int] = []

    def load() -> None:  # bounded: 60 s or until stopped, one call at a time per thread
        with httpx.Client(timeout=60) as http:
            end = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < end:
                done.append(http.post(f"{gw.url}/function/ui-load", content=b"0.5").status_code)

    threads = [threading.Thread(target=load) for _ in range(4)]
    try:
        page.goto(f"{gw.url}/ui/functions/ui-load")
        expect(page.locator("#live")).to_be_visible()
        tiles = page.locator('.tiles[data-fn="ui-load"]')
        expect(tiles.locator('[data-k="busy"]')).to_have_text("0")
        for t in threads:
            t.start()
        # The tiles follow the containers live (no reload): several busy at once.
        page.wait_for_function(
            """() => {
                const n = (k) => Number(document.querySelector(
                    '.tiles [data-k="' + k + '"]').textContent);
                return n("busy") >= 2;
            }""",
            timeout=60_000,
        )
        expect(page.locator('#rows tr[data-status="succeeded"]').first).to_be_visible()
        page.screenshot(path=str(OUT / "function-under-load-1280.png"), full_page=True)
        overview = page.context.new_page()
        overview.goto(f"{gw.url}/ui/")
        row = overview.locator('#functions tr[data-fn="ui-load"]')
        expect(row.locator('[data-k="busy"]')).not_to_have_text("0", timeout=20_000)
        overview.wait_for_function(
            "() => document.querySelectorAll('#chart-containers polyline, "
            "#chart-containers circle').length > 0",
            timeout=30_000,
        )
        overview.screenshot(path=str(OUT / "functions-1280.png"))
        phone = log_in(browser, gw, PHONE)
        expect(phone.locator('#functions tr[data-fn="ui-load"]')).to_be_visible()
        wide = phone.evaluate("() => document.documentElement.scrollWidth > window.innerWidth")
        assert not wide, "the functions page scrolls sideways at phone width"
        phone.screenshot(path=str(OUT / "functions-phone.png"), full_page=True)
        phone.context.close()
    finally:
        stop.set()
        for t in threads:
            t.join(90)
        page.context.close()
    assert done, "no call was answered"
    assert set(done) == {200}, f"calls answered {sorted(set(done))}"


def test_redrive_a_dead_letter(gw: RunningGateway, browser: Any) -> None:
    from playwright.sync_api import expect

    spec = {"name": "ui-flaky", "image": BUSYBOX, "mode": "oneshot", "retries": 0}
    deploy(gw, {**spec, "command": ["sh", "-c", "echo the disk is full >&2; exit 3"]})
    with gw.http() as http:
        r = http.post("/async-function/ui-flaky", content=b"job 1")
        assert r.status_code == 202, r.text
        call_id = r.headers["x-call-id"]

        def status() -> str:
            return str(http.get(f"/invocations/{call_id}").json()["status"])

        wait_for(lambda: status() == "dead", 60, "the call to land in the dead letter")
        page = log_in(browser, gw)
        try:
            # A sync call fails meanwhile: the overview lists it, live, with its reason.
            expect(page.locator("#live")).to_be_visible()
            assert http.post("/function/ui-flaky", content=b"job 0").status_code == 502
            failures = page.locator("#failures")
            expect(failures).to_contain_text("ui-flaky", timeout=20_000)
            expect(failures).to_contain_text("the disk is full")
            page.goto(f"{gw.url}/ui/dead-letters")
            row = page.locator(f'#dead tr[data-id="{call_id}"]')
            expect(row).to_contain_text("the disk is full")
            page.screenshot(path=str(OUT / "dead-letters-1280.png"))
            # The operator fixes the function, then redrives the call.
            deploy(gw, {**spec, "command": ["cat"]})
            row.locator("button").click()
            expect(page.locator(".flash")).to_have_text("Queued again, with fresh retries.")
            wait_for(lambda: status() == "succeeded", 60, "the redriven call to succeed")
            page.goto(f"{gw.url}/ui/invocations/{call_id}")
            expect(page.locator(".head .badge")).to_have_text("succeeded")
            expect(page.locator("#stdout")).to_have_text("job 1")
        finally:
            page.context.close()


def test_actions_without_the_csrf_token_are_refused(gw: RunningGateway, browser: Any) -> None:
    from playwright.sync_api import expect

    deploy(gw, {"name": "ui-keep", "image": BUSYBOX, "mode": "oneshot", "command": ["cat"]})
    page = log_in(browser, gw)
    try:
        api = page.context.request  # the browser's cookies, the session's among them
        url = f"{gw.url}/ui/functions/ui-keep/remove"
        for form in ({}, {"csrf": "0" * 64}, {"csrf": ""}):
            r = api.post(url, form=form, max_redirects=0)
            assert r.status == 403, (form, r.status)
            assert "CSRF token is missing or wrong" in r.text()
        # The same action with the page's own form (its token) goes through.
        page.goto(f"{gw.url}/ui/functions/ui-keep")
        page.on("dialog", lambda d: d.accept())
        with gw.http() as http:
            assert http.get("/system/functions/ui-keep").status_code == 200
            page.click("form[data-confirm] button")
            expect(page.locator(".flash")).to_have_text("Removed, with its containers.")
            assert http.get("/system/functions/ui-keep").status_code == 404
        # Logged out: the old session's cookie is worthless, even if someone kept it.
        (old,) = [c["value"] for c in page.context.cookies() if c["name"] == "swarmless_ui"]
        page.click("header form button")
        expect(page).to_have_url(re.compile(r"/ui/login$"))
        with httpx.Client(base_url=gw.url, cookies={"swarmless_ui": old}, timeout=30) as http:
            assert http.get("/ui/").status_code == 303
            r = http.post("/ui/deploy", data={"spec": "name: x"})
            assert r.status_code == 403
    finally:
        page.context.close()


def test_keyboard_and_the_other_pages(gw: RunningGateway, browser: Any) -> None:
    from playwright.sync_api import expect

    deploy(gw, {"name": "ui-echo", "image": BUSYBOX, "mode": "oneshot", "command": ["cat"]})
    with gw.http() as http:
        assert http.post("/function/ui-echo", content=b"hi").status_code == 200
    page = log_in(browser, gw)
    try:
        page.keyboard.press("g")
        page.keyboard.press("i")
        expect(page).to_have_url(f"{gw.url}/ui/invocations")
        page.keyboard.press("j")
        focused = page.evaluate("() => document.activeElement.dataset.row !== undefined")
        assert focused, "j moves to the first row"
        page.keyboard.press("?")
        expect(page.locator("#help")).to_be_visible()
        page.keyboard.press("Escape")
        page.keyboard.press("g")
        page.keyboard.press("c")
        expect(page).to_have_url(f"{gw.url}/ui/cluster")
        expect(page.locator("#replica-role")).to_have_text("active")
        expect(page.locator("#nodes tbody tr")).to_have_count(1)
        page.keyboard.press("g")
        page.keyboard.press("s")
        expect(page.locator("#empty")).to_contain_text("No schedules")
        page.goto(f"{gw.url}/ui/invocations?status=bogus")
        expect(page.locator("#error-message")).to_contain_text("status must be one of")
    finally:
        page.context.close()
