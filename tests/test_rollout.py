"""``swarmless deploy`` against a real gateway and engine: rollouts, atomic files, dry runs,
``build NAME``, ``.env`` files and the SDK inside functions.

Each test starts its own gateway (tests/gateway_harness.py) and deploys through the CLI as
a user would (``SWARMLESS_GATEWAY_URL``, ``SWARMLESS_TOKEN``). Images are tagged under
``swarmless-test-r/`` and removed at the end, with the untagged builds of this module
(labelled ``swarmless.test``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import types
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import httpx
import pytest
import yaml
from click.testing import CliRunner, Result

from swarmless.cli import main
from swarmless.dispatch.pool import WarmPool
from swarmless.dispatch.pool_types import Worker
from swarmless.gateway import rollout
from swarmless.spec import FunctionSpec
from tests.conftest import BUSYBOX, PYTHON
from tests.gateway_harness import TOKEN, RunningGateway
from tests.waiting import wait_until

RUN = uuid.uuid4().hex[:8]
#: The functions whose images these tests build (here and in tests/test_templates.py): the
#: untagged builds of those (a dry run's, a refused file's) are removed at the end.
BUILT = frozenset({"roll-r", "dry-r", "envy-r", "callee-r", "hello-node-t", "hello-go-t"})


@pytest.fixture(scope="module")
def images(engine: docker.DockerClient) -> Iterator[Callable[[str], str]]:
    """Hands out image tags under swarmless-test-r/; removes them at the end, with the
    untagged builds of the functions of this module and of tests/test_templates.py."""
    made: list[str] = []

    def tag(name: str) -> str:
        made.append(f"swarmless-test-r/{name}:{RUN}")
        return made[-1]

    yield tag
    for name in made:
        with contextlib.suppress(docker.errors.DockerException):
            engine.images.remove(name, force=True)
    for image in engine.images.list(filters={"dangling": True, "label": "swarmless.function"}):
        if image.labels.get("swarmless.function") in BUILT:
            with contextlib.suppress(docker.errors.DockerException):
                engine.images.remove(image.id, force=True)


def cli(gw: RunningGateway, *args: str) -> Result:
    """``swarmless ARGS`` as a user of ``gw`` runs it."""
    env = {"SWARMLESS_GATEWAY_URL": gw.url, "SWARMLESS_TOKEN": TOKEN}
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def yml(folder: Path, functions: dict[str, dict[str, object]], **settings: str) -> Path:
    doc: dict[str, object] = {"functions": functions}
    if settings:
        doc["settings"] = settings
    (folder / "swarmless.yml").write_text(yaml.safe_dump(doc))
    return folder


def warm_folder(tmp_path: Path, name: str, image: str, answer: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "handler.py").write_text(f"def handle(event, context):\n    return {answer!r}\n")
    spec = {
        "build": ".",
        "image": image,
        "mode": "warm",
        "handler": "handler:handle",
        "concurrency": 4,
    }
    return yml(folder, {name: spec}, base_image=PYTHON)


# -- a rollout under load ----------------------------------------------------------------


class Load:
    """Calls from a few threads until stopped (60 s at most): when each was sent, what it
    answered."""

    def __init__(self, url: str, threads: int = 3) -> None:
        self.url = url
        self.calls: list[tuple[float, int, str]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(90)

    def _run(self) -> None:
        end = time.monotonic() + 60
        with httpx.Client(timeout=30) as c:
            while not self._stop.is_set() and time.monotonic() < end:
                sent = time.monotonic()
                try:
                    r = c.post(self.url, content=b"{}")
                    outcome = (sent, r.status_code, r.text)
                except httpx.HTTPError as e:
                    outcome = (sent, 0, repr(e))
                with self._lock:
                    self.calls.append(outcome)

    def count(self) -> int:
        with self._lock:
            return len(self.calls)


def test_edit_and_redeploy_serves_only_the_new_code_once_deploy_returns(
    tmp_path: Path, gateway: RunningGateway, images: Callable[[str], str]
) -> None:
    folder = warm_folder(tmp_path, "roll-r", images("roll"), "v1")
    first = cli(gateway, "deploy", str(folder))
    assert first.exit_code == 0, first.output
    assert "deployed roll-r (warm) version 1" in first.output
    url = f"{gateway.url}/function/roll-r"
    assert httpx.post(url, timeout=60).text == "v1"
    with Load(url) as load:
        wait_until(lambda: load.count() >= 20, 30, "20 calls of version 1 under load")
        (folder / "handler.py").write_text("def handle(event, context):\n    return 'v2'\n")
        second = cli(gateway, "deploy", str(folder))
        returned = time.monotonic()
        served = load.count()
        wait_until(lambda: load.count() >= served + 50, 30, "50 calls after the deploy")
    assert second.exit_code == 0, second.output
    assert "deployed roll-r (warm) version 2 (was 1)" in second.output
    assert "rolled out" in second.output
    failed = [c for c in load.calls if c[1] != 200]
    assert not failed, f"calls failed during the rollout: {failed[:5]}"
    after = [text for sent, _, text in load.calls if sent >= returned]
    assert len(after) >= 50
    assert set(after) == {"v2"}, f"{after.count('v1')} calls sent after deploy returned got v1"
    assert {text for _, _, text in load.calls} == {"v1", "v2"}
    # The same code again: the same version, nothing rolled.
    third = cli(gateway, "deploy", str(folder))
    assert third.exit_code == 0, third.output
    assert "version 2 (unchanged)" in third.output


def test_dry_run_shows_what_would_change_and_changes_nothing(
    tmp_path: Path, gateway: RunningGateway, images: Callable[[str], str]
) -> None:
    folder = warm_folder(tmp_path, "dry-r", images("dry"), "first")
    assert cli(gateway, "deploy", str(folder)).exit_code == 0
    (folder / "handler.py").write_text("def handle(event, context):\n    return 'second'\n")
    doc = yaml.safe_load((folder / "swarmless.yml").read_text())
    doc["functions"]["dry-r"]["timeout"] = 45
    (folder / "swarmless.yml").write_text(yaml.safe_dump(doc))
    result = cli(gateway, "deploy", "--dry-run", str(folder))
    assert result.exit_code == 0, result.output
    assert "dry-r: version 1 -> 2: image content (new code); timeout 30.0 -> 45" in result.output
    assert "dry run: nothing was deployed" in result.output
    assert gateway.client().function("dry-r")["version"] == 1
    assert httpx.post(f"{gateway.url}/function/dry-r", timeout=60).text == "first"


# -- a file is deployed whole or not at all ------------------------------------------------


def test_a_file_with_problems_deploys_nothing_and_says_what_to_fix(
    tmp_path: Path, gateway: RunningGateway, images: Callable[[str], str]
) -> None:
    secret = f"absent-{RUN}"
    functions: dict[str, dict[str, object]] = {
        "fine-r": {"image": BUSYBOX, "command": ["echo", "fine"]},
        "secretive-r": {
            "image": BUSYBOX,
            "command": ["cat", f"/run/secrets/{secret}"],
            "secrets": [secret],
        },
        "imageless-r": {"image": "swarmless-test-r/absent:nope"},
    }
    folder = tmp_path / "multi"
    folder.mkdir()
    yml(folder, functions)
    result = cli(gateway, "deploy", str(folder))
    assert result.exit_code == 1
    assert f"secretive-r.secrets: no secret named {secret}" in result.output
    assert "imageless-r.image:" in result.output
    assert "nothing was deployed: 2 problem(s) in 3 function(s)" in result.output
    assert gateway.client().functions() == []
    # Fixed: all three are deployed.
    gateway.client().put_secret(secret, b"hush")
    functions["imageless-r"] = {"image": BUSYBOX, "command": ["echo", "now"]}
    yml(folder, functions)
    result = cli(gateway, "deploy", str(folder))
    assert result.exit_code == 0, result.output
    assert sorted(f["name"] for f in gateway.client().functions()) == [
        "fine-r",
        "imageless-r",
        "secretive-r",
    ]
    assert gateway.client().invoke("secretive-r").text == "hush"


def test_env_file_and_build_by_name(
    tmp_path: Path,
    gateway: RunningGateway,
    images: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = tmp_path / "envy"
    folder.mkdir()
    (folder / ".env").write_text("# greetings\nGREETING='hello there'\nexport WHO=Ada # note\n")
    (folder / "Dockerfile.alt").write_text(f'FROM {BUSYBOX}\nCMD ["env"]\n')
    yml(
        folder,
        {
            "envy-r": {
                "build": ".",
                "dockerfile": "Dockerfile.alt",
                "image": images("envy"),
                "env_file": ".env",
                "env": {"WHO": "Grace"},
            }
        },
    )
    monkeypatch.chdir(folder)
    built = cli(gateway, "build", "envy-r")  # a name declared in ./swarmless.yml
    assert built.exit_code == 0, built.output
    assert f"built envy-r -> {images('envy')}" in built.output
    assert f"FROM {BUSYBOX}" in built.output
    assert cli(gateway, "deploy").exit_code == 0
    env = gateway.client().invoke("envy-r").text
    assert "GREETING=hello there\n" in env
    assert "WHO=Grace\n" in env  # env: wins over the file
    # A deployed function's name, from elsewhere: its build folder is rebuilt.
    monkeypatch.chdir(tmp_path)
    again = cli(gateway, "build", "envy-r")
    assert again.exit_code == 0, again.output
    assert "built envy-r" in again.output
    unknown = cli(gateway, "build", "nobody-r")
    assert unknown.exit_code == 1
    assert "no function deployed on the gateway by that name" in unknown.output


# -- the SDK inside functions --------------------------------------------------------------

CALLER = """
import json
import swarmless


def handle(event, context):
    client = swarmless.from_env()
    now = client.invoke("callee-r", "hi")
    later = client.spawn("callee-r", "later")
    return {
        "client": type(client).__name__,
        "sync": now.text,
        "sync_call": now.call_id,
        "async": later.result(timeout=60).text,
    }
"""

ONESHOT = """
import swarmless

print(swarmless.from_env().invoke("callee-r", "from a one-shot").text)
"""


def test_from_env_inside_functions_calls_other_functions(
    tmp_path: Path, gateway: RunningGateway, images: Callable[[str], str]
) -> None:
    folder = tmp_path / "sdk"
    folder.mkdir()
    (folder / "caller.py").write_text(CALLER)
    (folder / "oneshot.py").write_text(ONESHOT)
    (folder / "callee.py").write_text(
        "def handle(event, context):\n    return event['body'].decode().upper()\n"
    )
    image = images("sdk")
    yml(
        folder,
        {
            "callee-r": {
                "build": ".",
                "image": image,
                "mode": "warm",
                "handler": "callee:handle",
            },
            "caller-r": {"image": image, "mode": "warm", "handler": "caller:handle"},
            "shot-r": {
                "image": image,
                "mode": "oneshot",
                "command": ["python3", "/function/oneshot.py"],
            },
        },
        base_image=PYTHON,
    )
    result = cli(gateway, "deploy", str(folder))
    assert result.exit_code == 0, result.output
    client = gateway.client()
    answer = client.invoke("caller-r")
    assert answer.status == 200, answer.text
    body = answer.json()
    assert body["client"] == "FunctionClient"
    assert (body["sync"], body["async"]) == ("HI", "LATER")
    # The call tree: the callee's call is a child of the caller's.
    assert client.invocation(body["sync_call"]).parent == answer.call_id
    shot = client.invoke("shot-r")
    assert shot.text == "FROM A ONE-SHOT\n"
    # A function reads only the results of the calls it made: not another's, not the
    # gateway's token either.
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        r = http.get(f"/invocations/{answer.call_id}/result", headers={"Authorization": "x"})
    assert r.status_code == 401
    assert json.loads(r.text)["error"] == "unauthorized"


# -- the rollout's wait, alone -------------------------------------------------------------


def test_the_rollout_wait_is_woken_by_changes_not_by_polling(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A deploy's rollout wait looks at the containers when one changes, as a scale's wait
    does: in 0.4 s without a change it looks once or twice (a poll every 20 ms looked 20
    times), and it answers ``done`` as soon as the old version's container is retired."""
    looks = 0
    real = rollout._old_serving

    def counted(d: object, name: str, version: int) -> int:
        nonlocal looks
        looks += 1
        return real(d, name, version)  # type: ignore[arg-type]

    monkeypatch.setattr(rollout, "_old_serving", counted)

    async def main() -> None:
        spec = FunctionSpec(name="rolled", image=PYTHON, mode="warm", handler="h:handle")
        pool = WarmPool(spec, 2)
        old = Worker(id="w1", token="t", function="rolled", version=1, state="ready")
        pool.add_worker(old)
        d = types.SimpleNamespace(pools={"rolled": pool})
        waiting = asyncio.ensure_future(rollout.settle(d, "rolled", 2, 60.0))  # type: ignore[arg-type]
        await asyncio.sleep(0.4)  # the window in which a poll would have looked 20 times
        assert not waiting.done(), waiting
        seen = looks
        assert seen <= 3, f"the rollout wait looked {seen} times in 0.4 s with no change"
        pool.retire(old)
        got = await asyncio.wait_for(waiting, 30)
        assert got.state == "done", got
        assert got.old == 0, got
        assert looks == seen + 1, "one look once the container changed"

    asyncio.run(main())
