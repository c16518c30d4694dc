"""Python-native functions (swarmless.App) against a real gateway and real containers.

One gateway and one app for the module: the app's default pool stays warm between tests
(as it would for a user), functions with options of their own get pools of their own.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import httpx
import pytest

from swarmless.config import Settings
from swarmless.exceptions import InvalidArgument, PayloadTooLarge, SpecError
from swarmless.native import App, FunctionCall, RemoteError, lookup
from swarmless.runtime import native as wire
from tests import native_helpers
from tests.gateway_harness import TOKEN, RunningGateway
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def gateway(
    engine: docker.DockerClient, labels: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    g = RunningGateway(tmp_path_factory.mktemp("gw-native"), labels).start()
    yield g
    g.stop(engine)


@pytest.fixture(scope="module")
def settings(gateway: RunningGateway) -> Settings:
    return Settings.load(gateway_url=gateway.url, token=TOKEN)


@pytest.fixture(scope="module")
def app(settings: Settings) -> Iterator[App]:
    a = App("tnative", settings=settings, max_containers=3, timeout=60)
    with a.run():
        yield a


def test_a_closure_runs_remotely_and_prints_come_back(
    app: App, capsys: pytest.CaptureFixture[str]
) -> None:
    factor = 7

    @app.function()
    def times(x: int) -> int:
        print(f"times {x}")
        print("to stderr", file=sys.stderr)
        return x * factor

    assert times.remote(6) == 42
    out = capsys.readouterr()
    assert "times 6\n" in out.out
    assert "to stderr\n" in out.err
    assert times.local(2) == 14
    with pytest.raises(TypeError, match=r"times.remote\(...\)"):
        times(1)


def test_a_new_function_is_served_by_the_warm_pool(app: App) -> None:
    @app.function()
    def warm_up() -> int:
        return 1

    assert warm_up.remote() == 1
    before = {c.name for c in app.functions.values()}

    @app.function()
    def brand_new(x: int) -> int:
        return x + 1

    started = time.monotonic()
    assert brand_new.remote(1) == 2
    elapsed = time.monotonic() - started
    assert "brand_new" not in before
    # No image build and no container start: the pool's container loads the code.
    assert elapsed < 2.0, elapsed


def test_a_function_from_another_module(app: App) -> None:
    shifted = app.function()(native_helpers.shifted)
    assert shifted.remote(5) == 1010


def test_a_generator(app: App) -> None:
    countdown = app.function()(native_helpers.countdown)
    assert list(countdown.remote(3)) == [3, 2, 1]


def test_an_exception_comes_back_as_itself_with_its_traceback(app: App) -> None:
    check = app.function()(native_helpers.check)
    assert check.remote(12) == 12
    with pytest.raises(native_helpers.Unlucky, match="13 is unlucky") as info:
        check.remote(13)
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "Remote traceback" in notes
    # The frames name this side's file and show its source line.
    assert "native_helpers.py" in notes
    assert 'raise Unlucky(f"{number} is unlucky")' in notes
    assert "is unlucky" in info.value.remote_traceback  # type: ignore[attr-defined]


def test_an_exception_whose_class_cannot_come_back(app: App) -> None:
    @app.function()
    def odd() -> None:
        class Local(Exception):
            def __reduce__(self) -> tuple[object, ...]:
                raise TypeError("no")

        raise Local("only in the container")

    with pytest.raises(RemoteError, match="only in the container") as info:
        odd.remote()
    assert "Local" in info.value.type_name
    assert "raise Local" in info.value.remote_traceback


def test_map_over_10000_inputs_batched_with_bounded_concurrency(
    app: App, gateway: RunningGateway
) -> None:
    @app.function()
    def inc(x: int) -> int:
        return x + 1

    pool = app.pool_name(inc)
    with gateway.client() as gw:
        before = len(gw.invocations(function=pool, limit=1000))
    results = list(inc.map(range(10_000), max_concurrency=2))
    assert results == list(range(1, 10_001))
    with gateway.client() as gw:
        calls = len(gw.invocations(function=pool, limit=1000)) - before
    assert 0 < calls < 200, calls  # batches, not one exchange per input
    # As they come, and starmap: every result, each once.
    assert sorted(inc.map(range(500), order=False)) == list(range(1, 501))

    @app.function()
    def add(a: int, b: int) -> int:
        return a + b

    assert list(add.starmap([(1, 2), (3, 4)])) == [3, 7]
    assert list(add.map([1, 2], [10, 20])) == [11, 22]


def test_map_returns_or_raises_exceptions(app: App) -> None:
    check = app.function()(native_helpers.check)
    got = list(check.map([12, 13, 14], return_exceptions=True))
    assert got[0] == 12
    assert got[2] == 14
    assert isinstance(got[1], native_helpers.Unlucky)
    with pytest.raises(native_helpers.Unlucky):
        list(check.map([12, 13, 14]))


def test_a_function_calling_another_is_recorded_as_its_child(
    app: App, gateway: RunningGateway
) -> None:
    @app.function()
    def leaf(x: int) -> int:
        return x * 10

    @app.function()
    def parent(x: int) -> list[int]:
        return [leaf.remote(x), *leaf.map([x + 1, x + 2])]

    assert parent.remote(1) == [10, 20, 30]
    pool = app.pool_name(parent)
    with gateway.client() as gw:
        records = gw.invocations(function=pool, limit=50)
    parents = {r.parent for r in records if r.parent}
    assert parents, "no call was recorded with a parent"
    assert parents <= {r.id for r in records}


def test_spawn_and_async_twins(app: App) -> None:
    @app.function()
    def slow_square(x: int) -> int:
        return x * x

    call = slow_square.spawn(9)
    assert isinstance(call, FunctionCall)
    assert call.get(timeout=60) == 81

    async def main() -> tuple[int, int, list[int]]:
        a = await slow_square.remote.aio(3)
        b = await (await slow_square.spawn.aio(4)).get.aio(timeout=60)
        c = [y async for y in slow_square.map.aio(range(5))]
        return a, b, c

    assert asyncio.run(main()) == (9, 16, [0, 1, 4, 9, 16])


def test_clear_messages_for_common_mistakes(app: App) -> None:
    def plain(x: int) -> int:
        return x

    with pytest.raises(TypeError, match=r"needs parentheses: write @tnative.function\(\)"):
        app.function(plain)
    with pytest.raises(InvalidArgument, match="unknown option"):
        app.function(timout=3)
    with pytest.raises(SpecError, match="timeout"):
        app.function(timeout=-1)

    echo = app.function()(plain)
    lock = threading.Lock()
    with pytest.raises(InvalidArgument, match=r"arguments of plain \(argument 1, a lock\)"):
        echo.remote(lock)

    uses_lock = app.function(name="uses-lock")(lambda: lock.locked())
    with pytest.raises(InvalidArgument, match="cannot be sent to a container"):
        uses_lock.remote()

    with pytest.raises(PayloadTooLarge, match="max_body"):
        echo.remote(b"x" * (11 * 1024 * 1024))


def test_an_oversize_result_is_a_clear_error(app: App) -> None:
    @app.function(max_output="1m")
    def big() -> bytes:
        return b"x" * (2 * 1024 * 1024)

    with pytest.raises(OverflowError, match=r"over the pool's limit .*max_output"):
        big.remote()


def test_requirements_from_the_package_registry(app: App) -> None:
    @app.function(requirements=["six==1.16.0"])
    def six_version() -> str:
        import six

        return str(six.__version__)

    assert six_version.remote() == "1.16.0"


def test_a_notebook_style_main_function(gateway: RunningGateway, tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import swarmless
        app = swarmless.App("tnotebook", max_containers=1)
        numbers = [1, 2, 3]

        @app.function()
        def total(extra):
            return sum(numbers) + extra

        print("result", total.remote(4))
        """
    )
    env = {**os.environ, "SWARMLESS_GATEWAY_URL": gateway.url, "SWARMLESS_TOKEN": TOKEN}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "result 10" in done.stdout
    # The implicit run ended with the interpreter: its pool is gone.
    with gateway.client() as gw:
        assert not [f for f in gw.functions() if f["name"].startswith("tnotebook")]


def test_swarmless_run_script_main(gateway: RunningGateway, tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent(
            """
            import swarmless

            app = swarmless.App("tscript", max_containers=1)

            @app.function()
            def double(x):
                print("doubling", x)
                return 2 * x

            def main(n):
                return sum(double.map(range(int(n))))
            """
        )
    )
    env = {**os.environ, "SWARMLESS_GATEWAY_URL": gateway.url, "SWARMLESS_TOKEN": TOKEN}
    run = [sys.executable, "-m", "swarmless", "run"]
    done = subprocess.run(
        [*run, f"{script}::main", "4"], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "12"
    assert "doubling 3" in done.stdout
    # A native function as the entry point, and a name the script lacks.
    done = subprocess.run(
        [*run, f"{script}::double", "21"], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "2121"  # ARGS are strings
    done = subprocess.run(
        [*run, f"{script}::nope"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "has no function 'nope'" in done.stderr
    with gateway.client() as gw:
        assert not [f for f in gw.functions() if f["name"].startswith("tscript")]


def test_deploy_answers_by_name_over_http_and_to_lookup(
    gateway: RunningGateway, settings: Settings
) -> None:
    deployed = App("tdeployed", settings=settings, max_containers=1)

    @deployed.function()
    def greet(name: str, punctuation: str = "!") -> str:
        return f"hello {name}{punctuation}"

    paths = deployed.deploy()
    try:
        assert paths == {"greet": "/function/tdeployed/greet"}
        with gateway.http() as http:
            answer = http.post(paths["greet"], json={"args": ["ada"], "kwargs": {}})
        assert answer.status_code == 200, answer.text
        assert answer.json() == "hello ada!"
        with httpx.Client(base_url=gateway.url) as anonymous:  # private: the token is needed
            assert anonymous.post(paths["greet"], json={"args": ["x"]}).status_code == 401

        other = lookup("tdeployed", "greet", settings=settings)
        assert other.remote("bob", punctuation="?") == "hello bob?"
        assert other.spawn("eve").get(timeout=60) == "hello eve!"
    finally:
        deployed.remove()
    with gateway.client() as gw:
        wait_until(
            lambda: not [f for f in gw.functions() if f["name"] == "tdeployed"],
            30,
            "the deployed app's pool to go",
        )


def test_app_run_removes_its_pools(gateway: RunningGateway, settings: Settings) -> None:
    short = App("tshort", settings=settings, max_containers=1)

    @short.function()
    def one() -> int:
        return 1

    with short.run():
        assert one.remote() == 1
        pool = short.pool_name(one)
        with gateway.client() as gw:
            assert pool in {f["name"] for f in gw.functions()}
    with gateway.client() as gw:
        assert pool not in {f["name"] for f in gw.functions()}
        assert f"{pool}.native-key" not in gw.secrets()


def test_a_call_not_signed_with_the_apps_key_is_refused(app: App, gateway: RunningGateway) -> None:
    @app.function()
    def target() -> int:
        return 1

    assert target.remote() == 1
    forged = App("tnative", settings=Settings.load(gateway_url=gateway.url, token="other-key"))
    body = wire.encode_call(
        forged.key, fn="target", code_hash="0" * 32, code=b"", args=b"", budget=0
    )
    with gateway.http() as http:
        answer = http.post(f"/function/{app.pool_name(target)}/target", content=body)
    reply = wire.decode_reply(answer.content)
    assert reply["failed"]
    assert "not signed with this app's key" in reply["items"][0][2]["message"]
