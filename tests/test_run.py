"""Client.run against the real engine: the 2016 call shape and everything it lacked."""

from __future__ import annotations

import asyncio
import ipaddress
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

import swarmless
from tests.conftest import BUSYBOX, PYTHON, SESSION
from tests.waiting import wait_until

LEFTPAD = """\
import sys
text, width = sys.argv[1], int(sys.argv[2])
print(text.rjust(width))
"""


@pytest.fixture(scope="module")
def leftpad(build_image: Callable[..., str]) -> str:
    return build_image(
        "leftpad",
        f'FROM {PYTHON}\nCOPY leftpad.py /leftpad.py\nENTRYPOINT ["python3", "/leftpad.py"]\n',
        {"leftpad.py": LEFTPAD},
    )


@pytest.fixture
def labels() -> dict[str, str]:
    """This test's own label beside the session's.

    A check like "nothing of mine is left" must count only what this test made: other test
    files' containers carry the session label too, and some go away only later (CI once
    failed every test here on three of them).
    """
    return {"swarmless.test": SESSION, "swarmless.test.case": uuid.uuid4().hex[:12]}


def _containers(engine: docker.DockerClient, labels: dict[str, str]) -> list[str]:
    flt = {"label": [f"{k}={v}" for k, v in labels.items()]}
    return [c.id for c in engine.containers.list(all=True, filters=flt)]


@pytest.fixture(scope="module")
def record_vote(build_image: Callable[..., str]) -> str:
    # A stand-in for bfirsh/serverless-record-vote-task: arguments in, a line out.
    script = (
        '#!/bin/sh\n[ -n "$2" ] || { echo "usage: VOTER VOTE" >&2; exit 2; }\necho "$1 voted $2"\n'
    )
    return build_image(
        "record-vote",
        f'FROM {BUSYBOX}\nCOPY record.sh /record.sh\nENTRYPOINT ["/record.sh"]\n',
        {"record.sh": script},
    )


def test_seed_call_parity(
    record_vote: str, engine: docker.DockerClient, labels: dict[str, str]
) -> None:
    # The 2016 essay's call, exactly as written: positional image, list of args, detach.
    client = swarmless.from_env()
    voter_id, vote = "alice", "a"
    handle = client.run(record_vote, [voter_id, vote], detach=True)
    assert isinstance(handle, swarmless.Run)
    assert handle.result() == b"alice voted a\n"
    # The failure path raises, with the container's stderr.
    with pytest.raises(swarmless.ContainerError) as info:
        client.run(record_vote, [voter_id], labels=labels)
    assert info.value.exit_status == 2
    assert b"usage" in info.value.stderr
    assert _containers(engine, labels) == []


def test_missing_executable_is_a_container_error(client: swarmless.Client) -> None:
    with pytest.raises(swarmless.ContainerError) as info:
        client.run(BUSYBOX, ["no-such-program"])
    assert info.value.exit_status == 127
    assert b"no-such-program" in info.value.stderr


def test_leftpad(client: swarmless.Client, leftpad: str) -> None:
    assert client.run(leftpad, ["foo", "5"]) == b"  foo\n"
    assert client.run(leftpad, ["foo", "5"], text=True) == "  foo\n"


def test_stdin_round_trip_10mb(client: swarmless.Client) -> None:
    data = bytes(range(256)) * (10 * 1024 * 1024 // 256)
    out = client.run(BUSYBOX, ["cat"], stdin=data)
    assert len(out) == len(data)
    assert out == data


def test_stdin_str_and_file(client: swarmless.Client, tmp_path: object) -> None:
    import io

    assert client.run(BUSYBOX, ["tr", "a-z", "A-Z"], stdin="hello") == b"HELLO"
    assert client.run(BUSYBOX, ["wc", "-c"], stdin=io.BytesIO(b"12345")).strip() == b"5"


def test_nonzero_exit_carries_stderr(client: swarmless.Client) -> None:
    with pytest.raises(swarmless.ContainerError) as info:
        client.run(BUSYBOX, ["sh", "-c", "echo out; echo 'it broke' >&2; exit 3"])
    err = info.value
    assert err.exit_status == 3
    assert err.stderr == b"it broke\n"
    assert err.image == BUSYBOX
    assert err.command == ["sh", "-c", "echo out; echo 'it broke' >&2; exit 3"]
    assert "status 3" in str(err)
    assert "it broke" in str(err)
    assert isinstance(err, swarmless.SwarmlessError)


def test_stdout_and_stderr_together(client: swarmless.Client) -> None:
    out = client.run(BUSYBOX, ["sh", "-c", "echo a; echo b >&2"], stderr=True)
    assert sorted(out.split()) == [b"a", b"b"]


def test_env_workdir_user(client: swarmless.Client) -> None:
    out = client.run(
        BUSYBOX,
        ["sh", "-c", 'echo "$GREETING $(pwd) $(id -u)"'],
        env={"GREETING": "hi"},
        workdir="/tmp",
        user="1234",
        text=True,
    )
    assert out == "hi /tmp 1234\n"


def test_memory_and_cpus_applied(
    client: swarmless.Client, engine: docker.DockerClient, labels: dict[str, str]
) -> None:
    run = client.run(BUSYBOX, ["sleep", "5"], detach=True, memory="64m", cpus=0.5, labels=labels)
    with run:
        attrs = engine.api.inspect_container(run.id)
        assert attrs["HostConfig"]["Memory"] == 64 * 1024 * 1024
        assert attrs["HostConfig"]["NanoCpus"] == 500_000_000
        assert attrs["Config"]["Labels"]["swarmless.managed"] == "true"
        assert attrs["Config"]["Labels"]["swarmless.test"] == labels["swarmless.test"]
    assert _containers(engine, labels) == []


def test_timeout_kills_and_removes(
    client: swarmless.Client, engine: docker.DockerClient, labels: dict[str, str]
) -> None:
    t0 = time.monotonic()
    with pytest.raises(swarmless.RunTimeout) as info:
        client.run(BUSYBOX, ["sleep", "30"], timeout=1, labels=labels)
    assert time.monotonic() - t0 < 10
    assert info.value.timeout == 1
    assert _containers(engine, labels) == []


def test_detach_handle(
    client: swarmless.Client, engine: docker.DockerClient, labels: dict[str, str]
) -> None:
    run = client.run(
        BUSYBOX, ["sh", "-c", "echo one; sleep 0.3; echo two"], detach=True, labels=labels
    )
    assert run.id in _containers(engine, labels)
    lines = list(run.logs(follow=True))
    assert lines == [b"one\n", b"two\n"]
    assert run.wait(timeout=10) == 0
    assert run.result() == b"one\ntwo\n"
    assert _containers(engine, labels) == []


def test_detach_wait_timeout_and_kill(
    client: swarmless.Client, engine: docker.DockerClient, labels: dict[str, str]
) -> None:
    with client.run(BUSYBOX, ["sleep", "30"], detach=True, labels=labels) as run:
        assert not run.done
        with pytest.raises(swarmless.WaitTimeout):  # stopped waiting; it goes on
            run.wait(timeout=0.5)
        run.kill()
        assert run.wait(timeout=10) != 0
    assert _containers(engine, labels) == []


def test_detach_timeout(client: swarmless.Client) -> None:
    run = client.run(BUSYBOX, ["sleep", "30"], detach=True, timeout=1)
    with pytest.raises(swarmless.RunTimeout):
        run.result(timeout=15)


def test_detach_stdin(client: swarmless.Client) -> None:
    run = client.run(BUSYBOX, ["cat"], detach=True, stdin=b"piped")
    assert run.result(timeout=15) == b"piped"


def test_abandoned_handle_is_reaped(
    client: swarmless.Client, engine: docker.DockerClient, labels: dict[str, str]
) -> None:
    client.run(BUSYBOX, ["true"], detach=True, labels=labels)  # handle dropped at once
    wait_until(lambda: _containers(engine, labels) == [], 15, "the container reaped", interval=0.2)


def test_remove_false_keeps_container(
    client: swarmless.Client, engine: docker.DockerClient, labels: dict[str, str]
) -> None:
    client.run(BUSYBOX, ["true"], remove=False, labels=labels)
    kept = _containers(engine, labels)
    assert len(kept) == 1
    engine.containers.get(kept[0]).remove(force=True)


def test_concurrent_runs_from_20_threads(client: swarmless.Client) -> None:
    results: dict[int, bytes] = {}
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            results[i] = client.run(BUSYBOX, ["echo", str(i)])  # type: ignore[assignment]
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert results == {i: f"{i}\n".encode() for i in range(20)}


def test_engine_down_is_clear(tmp_path: object) -> None:
    client = swarmless.from_env(docker_host="unix:///tmp/swarmless-no-such.sock")
    with pytest.raises(swarmless.EngineUnavailable) as info:
        client.run(BUSYBOX, ["true"])
    assert "unix:///tmp/swarmless-no-such.sock" in str(info.value)
    assert "engine.sh" in str(info.value)


def test_engine_down_via_docker_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///tmp/swarmless-dead.sock")
    with pytest.raises(swarmless.EngineUnavailable) as info:
        swarmless.from_env().run(BUSYBOX, ["true"])
    assert "swarmless-dead.sock" in str(info.value)


def test_image_not_found(client: swarmless.Client) -> None:
    with pytest.raises(swarmless.ImageNotFound) as info:
        client.run("swarmless-test/does-not-exist:nope", ["true"])
    assert "swarmless-test/does-not-exist:nope" in str(info.value)
    with pytest.raises(swarmless.ImageNotFound):
        client.run("swarmless-test/does-not-exist:nope", ["true"], pull="never")


@pytest.mark.parametrize(
    ("image", "command", "kwargs"),
    [
        ("", None, {}),
        ("   ", None, {}),
        (None, None, {}),
        (BUSYBOX, ["echo", 5], {}),
        (BUSYBOX, 42, {}),
        (BUSYBOX, None, {"timeout": -1}),
        (BUSYBOX, None, {"pull": "sometimes"}),
        (BUSYBOX, None, {"env": {"A": 1}}),
        (BUSYBOX, None, {"stdin": 12}),
        (BUSYBOX, None, {"cpus": 0}),
    ],
)
def test_bad_arguments_refused_before_start(
    client: swarmless.Client,
    engine: docker.DockerClient,
    image: object,
    command: object,
    kwargs: dict[str, object],
) -> None:
    # A label of this case alone: other work on the engine must not count.
    mark = {"swarmless.test-case": uuid.uuid4().hex}
    with pytest.raises(ValueError, match="must"):
        client.run(image, command, labels=mark, **kwargs)  # type: ignore[arg-type]
    flt = {"label": f"swarmless.test-case={mark['swarmless.test-case']}"}
    assert engine.api.containers(all=True, filters=flt) == []


def test_keyboard_interrupt_removes_container(
    client: swarmless.Client, engine: docker.DockerClient, labels: dict[str, str]
) -> None:
    import signal

    # Ctrl-C once the container runs (seen on the engine), never on a timer that may
    # fire before run() got that far on a loaded machine. A real SIGINT to the main
    # thread: it interrupts the blocking wait for the container, as a Ctrl-C does.
    done = threading.Event()

    def interrupt_when_running() -> None:
        flt = {"label": [f"{k}={v}" for k, v in labels.items()], "status": "running"}
        deadline = time.monotonic() + 60
        while not done.is_set() and time.monotonic() < deadline:
            if engine.api.containers(filters=flt):
                signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
                return
            done.wait(0.05)

    watcher = threading.Thread(target=interrupt_when_running, daemon=True)
    watcher.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            client.run(BUSYBOX, ["sleep", "30"], labels=labels)
    finally:
        done.set()
        watcher.join(10)
    assert _containers(engine, labels) == []


def test_async_client_same_semantics(engine: docker.DockerClient) -> None:
    async def main() -> None:
        client = swarmless.AsyncClient.from_env()
        assert await client.run(BUSYBOX, ["echo", "async"]) == b"async\n"
        with pytest.raises(swarmless.ContainerError):
            await client.run(BUSYBOX, ["false"])
        with pytest.raises(swarmless.RunTimeout):
            await client.run(BUSYBOX, ["sleep", "30"], timeout=1)
        handle = await client.run(BUSYBOX, ["echo", "bg"], detach=True)
        assert isinstance(handle, swarmless.AsyncRun)
        assert await handle.result() == b"bg\n"
        outs = await asyncio.gather(*(client.run(BUSYBOX, ["echo", str(i)]) for i in range(5)))
        assert outs == [f"{i}\n".encode() for i in range(5)]
        await client.close()

    asyncio.run(main())


# -- docker-py's names (issue 15): code moving from docker-py works --------------------------


@pytest.fixture(scope="module")
def own_network(engine: docker.DockerClient) -> Iterator[str]:
    name = f"swarmless-test-run-{uuid.uuid4().hex[:8]}"
    net = engine.networks.create(name, labels={"swarmless.test": SESSION})
    yield name
    net.remove()


def _until_gone(engine: docker.DockerClient, container_id: str, timeout: float = 20) -> None:
    wait_until(
        lambda: not engine.api.containers(all=True, filters={"id": container_id}),
        timeout,
        f"container {container_id[:12]} to be removed",
        interval=0.1,
    )


def test_string_command_is_split_as_docker_py_does(client: swarmless.Client) -> None:
    assert client.run(BUSYBOX, "echo hello world") == b"hello world\n"
    assert client.run(BUSYBOX, "sh -c 'echo \"a  b\"; echo $0' zero") == b"a  b\nzero\n"
    with pytest.raises(swarmless.InvalidArgument, match="cannot be split"):
        client.run(BUSYBOX, "echo 'unclosed")


def test_environment_reaches_the_container(client: swarmless.Client) -> None:
    cmd = ["sh", "-c", 'echo "$A $B"']
    assert client.run(BUSYBOX, cmd, environment={"A": "1", "B": 2}) == b"1 2\n"
    assert client.run(BUSYBOX, cmd, environment=["A=x", "B=y=z"]) == b"x y=z\n"
    with pytest.raises(swarmless.InvalidArgument, match="env or environment"):
        client.run(BUSYBOX, cmd, env={"A": "1"}, environment={"A": "2"})
    with pytest.raises(swarmless.InvalidArgument, match="KEY=value"):
        client.run(BUSYBOX, cmd, environment=["A"])


def test_working_dir_is_the_cwd_and_user_a_uid(client: swarmless.Client) -> None:
    out = client.run(BUSYBOX, "sh -c 'echo $(pwd) $(id -u)'", working_dir="/tmp", user=4321)
    assert out == b"/tmp 4321\n"


def test_network_mode_joins_a_network(
    client: swarmless.Client, engine: docker.DockerClient, own_network: str
) -> None:
    subnet = engine.api.inspect_network(own_network)["IPAM"]["Config"][0]["Subnet"]
    out = client.run(BUSYBOX, "hostname -i", network_mode=own_network)
    assert ipaddress.ip_address(out.decode().split()[0]) in ipaddress.ip_network(subnet)
    assert client.run(BUSYBOX, "ls /sys/class/net", network_mode="none") == b"lo\n"
    with pytest.raises(swarmless.InvalidArgument, match="network or network_mode"):
        client.run(BUSYBOX, "true", network="bridge", network_mode=own_network)


def test_volumes_bind_host_paths(client: swarmless.Client, tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("from the host\n")
    tmp_path.chmod(0o755)
    as_list = client.run(BUSYBOX, "cat /data/in.txt", volumes=[f"{tmp_path}:/data:ro"])
    assert as_list == b"from the host\n"
    as_dict = client.run(
        BUSYBOX,
        ["sh", "-c", "cat /d/in.txt; touch /d/new 2>/dev/null || echo read-only"],
        volumes={str(tmp_path): {"bind": "/d", "mode": "ro"}},
    )
    assert as_dict == b"from the host\nread-only\n"
    client.run(BUSYBOX, "touch /rw/written", volumes={str(tmp_path): "/rw"})
    assert (tmp_path / "written").exists()
    with pytest.raises(swarmless.InvalidArgument, match="volumes"):
        client.run(BUSYBOX, "true", volumes={str(tmp_path): {"mode": "ro"}})


def test_entrypoint_name_hostname_labels(
    client: swarmless.Client, engine: docker.DockerClient, labels: dict[str, str]
) -> None:
    assert client.run(BUSYBOX, "and args", entrypoint="echo from-entrypoint") == (
        b"from-entrypoint and args\n"
    )
    assert client.run(BUSYBOX, "hostname", hostname="voter") == b"voter\n"
    name = f"swarmless-test-named-{uuid.uuid4().hex[:8]}"
    with client.run(BUSYBOX, "sleep 30", detach=True, name=name, labels=[*labels, "tier"]) as run:
        attrs = engine.api.inspect_container(run.id)
        assert attrs["Name"] == f"/{name}"
        assert attrs["Config"]["Labels"]["tier"] == ""
        assert attrs["Config"]["Labels"]["swarmless.test"] == ""  # a list: names, no values
    _until_gone(engine, run.id)


def test_mem_limit_and_nano_cpus(client: swarmless.Client, engine: docker.DockerClient) -> None:
    with client.run(
        BUSYBOX, "sleep 30", detach=True, mem_limit="64m", nano_cpus=250_000_000
    ) as run:
        host = engine.api.inspect_container(run.id)["HostConfig"]
        assert (host["Memory"], host["NanoCpus"]) == (64 * 1024 * 1024, 250_000_000)
    with pytest.raises(swarmless.InvalidArgument, match="memory or mem_limit"):
        client.run(BUSYBOX, "true", memory="32m", mem_limit="64m")
    with pytest.raises(swarmless.InvalidArgument, match="nano_cpus"):
        client.run(BUSYBOX, "true", nano_cpus=0)


def test_auto_remove_lets_the_engine_remove_it(
    client: swarmless.Client, engine: docker.DockerClient
) -> None:
    run = client.run(BUSYBOX, "true", detach=True, remove=False, auto_remove=True)
    assert engine.api.inspect_container(run.id)["HostConfig"]["AutoRemove"] is True
    _until_gone(engine, run.id)


def test_unknown_keywords_are_named(client: swarmless.Client, engine: docker.DockerClient) -> None:
    mark = {"swarmless.test-case": uuid.uuid4().hex}
    with pytest.raises(TypeError) as info:
        client.run(BUSYBOX, "true", labels=mark, privileged=True, netwrok_mode="x", colour=1)  # type: ignore[call-overload]
    message = str(info.value)
    assert "unexpected keyword arguments 'colour', 'netwrok_mode', 'privileged'" in message
    assert "'netwrok_mode': did you mean 'network_mode'" in message
    assert "'privileged' is a docker-py option that swarmless's run() does not offer" in message
    flt = {"label": f"swarmless.test-case={mark['swarmless.test-case']}"}
    assert engine.api.containers(all=True, filters=flt) == []


def test_async_client_takes_docker_py_names(engine: docker.DockerClient) -> None:
    async def main() -> None:
        async with swarmless.AsyncClient.from_env() as client:
            out = await client.run(BUSYBOX, "sh -c 'echo $A'", environment={"A": "async"})
            assert out == b"async\n"
            with pytest.raises(TypeError, match="'nope'"):
                await client.run(BUSYBOX, "true", nope=1)  # type: ignore[call-overload]

    asyncio.run(main())
