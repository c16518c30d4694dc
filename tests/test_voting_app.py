"""The voting app (examples/voting-app) end to end: real engine, real PostgreSQL, real browser.

One gateway, one database and the three functions for the module (objects named
``swarmless-test-vote-<session>*``, labelled with the session, removed at the end; the
images are cached by tag across runs). The browser is Debian's chromium driven by
Playwright (``scripts/browser.sh`` installs it when it is absent; no browser download).
Screenshots go to ``test-output/voting-app/``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from swarmless.proxy import Caller, ProxyRequest, check
from tests.conftest import SESSION
from tests.gateway_harness import RunningGateway
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples" / "voting-app"))

import votingapp as app  # noqa: E402

OUT = ROOT / "test-output" / "voting-app"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@dataclasses.dataclass
class Stack:
    gw: RunningGateway
    names: app.Names
    images: app.Images
    db: app.Database

    def page(self, name: str) -> str:
        return app.urls(self.gw.url)[name]

    def deploy(self, **kwargs: Any) -> None:
        wanted = app.specs(self.images, self.db, **{"retries": 8, "backoff": 0.5, **kwargs})
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
    names = app.Names(f"swarmless-test-vote-{SESSION}")
    # The database, volume and network carry this label; the teardown goes by it alone.
    own = {**labels, "swarmless.test-stack": names.prefix}
    images = app.build_images(engine)
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
        gw = RunningGateway(tmp_path_factory.mktemp("gw-vote"), labels, network=names.network)
        gw.start()
        s = Stack(gw=gw, names=names, images=images, db=db)
        s.deploy(mode="warm", record="spawn")
        yield s
    finally:
        left: list[str] = []
        if gw is not None:
            # The gateway removes its own containers when it stops (the result page polled
            # until the end, so its function was busy a moment ago: nothing may replace it).
            gw.shutdown()
            left = [
                f"{c['Names'][0]} {c['State']} {c['Labels'].get('swarmless.kind')}"
                for c in engine.api.containers(
                    all=True, filters={"label": f"swarmless.gateway={gw.instance}"}
                )
            ]
            gw.stop(engine)
        app.remove_all(engine, names, proof=own)
        assert not left, f"containers left by the stopped gateway: {left}"
    assert not engine.containers.list(all=True, filters={"name": names.prefix})


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    found = subprocess.run(
        ["bash", str(ROOT / "scripts" / "browser.sh")], capture_output=True, text=True
    )
    if found.returncode != 0:
        pytest.fail(f"no chromium for the browser test: {found.stderr.strip()}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=found.stdout.strip(), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.mark.browser
def test_two_voters_in_a_real_browser(
    stack: Stack, browser: Any, engine: docker.DockerClient
) -> None:
    from playwright.sync_api import expect

    OUT.mkdir(parents=True, exist_ok=True)
    alice, bob = browser.new_context(), browser.new_context()  # two cookie jars, two voters
    try:
        ballot_a, ballot_b = alice.new_page(), bob.new_page()
        for page, choice, label in ((ballot_a, "a", "Cats"), (ballot_b, "b", "Dogs")):
            page.goto(stack.page("vote"))
            expect(page.locator("#container")).to_have_text(re.compile(r"^[0-9a-f]{12}$"))
            page.click(f"button#{choice}")
            expect(page.locator("#message")).to_contain_text(f"You voted for {label}")
            expect(page.locator("#message")).to_contain_text("queued as call")
            expect(page.locator(f"button#{choice}")).to_have_class("chosen")
            page.screenshot(path=str(OUT / f"vote-{choice}.png"))
        voters = {
            c["value"] for ctx in (alice, bob) for c in ctx.cookies() if c["name"] == "voter_id"
        }
        assert len(voters) == 2

        results = alice.new_page()
        results.goto(stack.page("result"))
        expect(results.locator("#total")).to_have_text("2", timeout=30_000)
        expect(results.locator("#a-percent")).to_have_text("50%")
        expect(results.locator("#b-percent")).to_have_text("50%")
        expect(results.locator("#container")).to_have_text(re.compile(r"^[0-9a-f]{12}$"))
        results.screenshot(path=str(OUT / "result-50-50.png"))

        # Alice changes her mind: still two votes, now both for Dogs.
        ballot_a.click("button#b")
        expect(ballot_a.locator("#message")).to_contain_text("You voted for Dogs")
        ballot_a.screenshot(path=str(OUT / "vote-changed.png"))
        expect(results.locator("#b-percent")).to_have_text("100%", timeout=30_000)
        expect(results.locator("#a-percent")).to_have_text("0%")
        expect(results.locator("#total")).to_have_text("2")
        results.screenshot(path=str(OUT / "result-changed.png"))
        assert stack.sql(engine, "SELECT count(*), min(vote), max(vote) FROM votes") == "2|b|b"
    finally:
        alice.close()
        bob.close()


def _vote(stack: Stack, choice: str) -> tuple[str, str]:
    """One vote from a new voter over plain HTTP: (voter id, what the page said)."""
    with httpx.Client(base_url=stack.gw.url, timeout=60) as http:
        r = http.post("/function/vote/", data={"vote": choice})
        assert r.status_code == 200, r.text
        voter = r.cookies["voter_id"]
        message = re.search(r'<p id="message">(.*?)</p>', r.text)
        assert message is not None, r.text
        return voter, message.group(1)


def test_failed_record_vote_is_recorded_and_retried(
    stack: Stack, engine: docker.DockerClient
) -> None:
    db = engine.containers.get(stack.names.db)
    db.stop(timeout=10)
    try:
        voter, said = _vote(stack, "a")  # the page answers: the call is queued, durably
        found = re.search(r"queued as call ([0-9a-f-]+)", said)
        assert found, said
        call_id = found.group(1)
        client = stack.gw.client()

        def failed_once() -> Any:
            rec = client.invocation(call_id)
            return rec if rec.attempt >= 2 and rec.status == "queued" else None

        rec = wait_until(failed_once, 60, "record-vote to fail and be queued again", interval=0.2)
        assert rec.kind == "async"
        assert rec.function == "record-vote"
        assert f"the vote of {voter} was not recorded" in (rec.error or ""), rec.error
        listed = client.invocations(function="record-vote", limit=1000)
        assert call_id in {r.id for r in listed}
    finally:
        db.start()
        app.wait_for_database(engine, stack.names.db)

    def final() -> Any:
        rec = client.invocation(call_id)
        return rec if rec.status in ("succeeded", "dead") else None

    rec = wait_until(final, 90, "record-vote to succeed once the database is back", interval=0.2)
    assert rec.status == "succeeded", rec.error
    assert rec.attempt >= 2
    assert rec.exit_code == 0
    assert stack.sql(engine, f"SELECT vote FROM votes WHERE voter_id = '{voter}'") == "a"
    client.close()


def test_the_sdk_run_labels_pass_the_scoped_api() -> None:
    """What ``swarmless.from_env().run()`` sends: its own labels are dropped, not refused."""
    caller = Caller(container="c" * 64, function="vote", network="net")
    body = (
        b'{"Image": "busybox", "Labels": {"swarmless.managed": "true", "swarmless.kind": "run",'
        b' "swarmless.image": "busybox", "app": "x"}}'
    )
    images = {"docker.io/library/busybox:latest": ""}
    v = check(ProxyRequest("POST", "/v1.41/containers/create", "", body, caller, images=images))
    assert v.allowed, v.message
    assert v.body is not None
    labels = json.loads(v.body)["Labels"]
    assert labels["swarmless.kind"] == "child"
    assert labels["app"] == "x"
    assert "swarmless.image" not in labels
    forged = body.replace(b'"app": "x"', b'"swarmless.parent": "someone"')
    assert (
        check(
            ProxyRequest("POST", "/v1.41/containers/create", "", forged, caller, images=images)
        ).rule
        == "labels"
    )


def test_cgi_mode_and_the_2016_call_shape(stack: Stack, engine: docker.DockerClient) -> None:
    """One switch to cgi; the vote path ``run(image, [voter_id, vote], detach=True)``."""
    stack.deploy(mode="cgi", record="docker")
    try:
        pages = set()
        for choice in ("a", "b"):
            voter, said = _vote(stack, choice)
            assert "task container" in said, said
            # cgi: the page waits for its child (a child dies with its parent container).
            assert stack.sql(engine, f"SELECT vote FROM votes WHERE voter_id = '{voter}'") == choice
        with httpx.Client(base_url=stack.gw.url, timeout=60) as http:
            for _ in range(2):
                r = http.get("/function/result/data.json")
                assert r.status_code == 200, r.text
                pages.add(r.json()["container"])
        assert len(pages) == 2  # one container per request
        total = int(stack.sql(engine, "SELECT count(*) FROM votes"))
        assert r.json()["total"] == total
        children = engine.containers.list(all=True, filters={"label": "swarmless.kind=child"})
        assert not [c for c in children if c.labels.get("swarmless.gateway") == stack.gw.instance]
    finally:
        stack.deploy(mode="warm", record="spawn")


# -- on a real 3-node Swarm (scripts/swarm-cluster.sh) --------------------------------------


@pytest.mark.swarm
@pytest.mark.slow
def test_the_app_on_a_swarm(
    engine: docker.DockerClient,
    labels: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
    cluster: Any,
) -> None:
    import swarm
    from tests.swarm_harness import SwarmGateway

    images = app.build_images(engine)
    cluster.load(images.vote, images.record_vote, images.result)
    manager = cluster.manager
    try:
        manager.images.get(images.postgres)
    except docker.errors.ImageNotFound:
        # Only the manager runs the database (placement): the big image goes there only.
        with tempfile.TemporaryFile() as tar:
            for chunk in engine.images.get(images.postgres).save(named=True):
                tar.write(chunk)
            tar.seek(0)
            manager.api.load_image(tar)
    names = app.Names(f"swarmless-test-vote-swarm-{SESSION}")
    gw = SwarmGateway(
        cluster, tmp_path_factory.mktemp("swarm-vote"), labels, network=names.network
    ).start()
    try:
        db = swarm.start_database_service(
            manager, image=images.postgres, names=names, password="test", labels=labels
        )
        for spec in app.specs(images, db, mode="warm", retries=8, backoff=0.5):
            gw.deploy(**spec.to_dict())
        voters = {"a": "", "b": ""}
        with httpx.Client(base_url=gw.url, timeout=120) as http:
            for choice in voters:
                r = http.post("/function/vote/", data={"vote": choice})
                assert r.status_code == 200, r.text
                assert "queued as call" in r.text
                http.cookies.clear()

            def tallied(total: int) -> Any:
                r = http.get("/function/result/data.json")
                return r.json() if r.status_code == 200 and r.json()["total"] == total else None

            data = wait_until(
                lambda: tallied(2), 90, "two votes recorded on the Swarm", interval=0.2
            )
            assert data["percent"] == {"a": 50, "b": 50}
            # record-vote is private on the Swarm too: vote's containers queued the votes
            # with their own tokens; a caller without one is refused.
            r = http.post("/async-function/record-vote", content=b"a")
            assert r.status_code == 401, r.text
            placement = gw.backend.placement()
            nodes = {placement.get(s["ID"]) for s in gw.services()} - {None}
            assert nodes, "no function container placed on a node"
            # The one switch, on the Swarm too: a cgi request is a service of its own.
            for spec in app.specs(images, db, mode="cgi", retries=8, backoff=0.5)[1:]:
                gw.deploy(**spec.to_dict())
            r = http.post("/function/vote/", data={"vote": "a"})
            assert r.status_code == 200, r.text
            data = wait_until(lambda: tallied(3), 90, "a third vote, through cgi", interval=0.2)
            assert data["votes"] == {"a": 2, "b": 1}
    finally:
        gw.stop()
        swarm.remove_swarm(manager, names, proof=labels)  # what this session made
    assert not manager.api.services(filters={"label": f"swarmless.gateway={gw.instance}"})
