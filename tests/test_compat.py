"""swarmless.compat.dockerrun against the real engine: the 2016 code, run unchanged.

Every call of dockerrun's API and every option it passed on is run with busybox and judged
on its effect in the container or on the engine. The network a test joins is its own
(``swarmless-test-compat-<session>``), removed at the end; every container carries the
session's labels and is gone when its test ends.
"""

from __future__ import annotations

import ipaddress
import pickle
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

import swarmless
from swarmless.compat import dockerrun
from swarmless.engine import engine_address
from tests.conftest import BUSYBOX, SESSION, SESSION_INSTANCE
from tests.waiting import wait_until

LABELS = {"swarmless.test": SESSION}


@pytest.fixture
def client(engine: docker.DockerClient) -> Iterator[dockerrun.Client]:
    c = dockerrun.from_env()
    yield c
    c.close()


@pytest.fixture(scope="module")
def network(engine: docker.DockerClient) -> Iterator[str]:
    name = f"swarmless-test-compat-{SESSION}"
    net = engine.networks.create(name, labels=LABELS)
    yield name
    net.remove()


@pytest.fixture(scope="module")
def record_vote(build_image: Callable[..., str]) -> str:
    # A stand-in for bfirsh/serverless-record-vote-task: VOTER VOTE in, a line out; it
    # stays up a while so that the test can look at it.
    script = '#!/bin/sh\necho "$1 voted $2"\nexec sleep "${3:-30}"\n'
    return build_image(
        "compat-record-vote",
        f'FROM {BUSYBOX}\nCOPY record.sh /record.sh\nENTRYPOINT ["/record.sh"]\n',
        {"record.sh": script},
    )


def until(predicate: Callable[[], bool], what: str, timeout: float = 20) -> None:
    wait_until(predicate, timeout, what, interval=0.1)


def gone(engine: docker.DockerClient, container_id: str) -> Callable[[], bool]:
    return lambda: not engine.api.containers(all=True, filters={"id": container_id})


def ours(engine: docker.DockerClient) -> list[str]:
    flt = {"label": [f"swarmless.instance={SESSION_INSTANCE}", f"swarmless.test={SESSION}"]}
    return [c["Id"] for c in engine.api.containers(all=True, filters=flt)]


# -- dockerrun's README, call by call ---------------------------------------------------


def test_readme_run_returns_stdout(client: dockerrun.Client) -> None:
    assert client.run(BUSYBOX, "echo hello world", labels=LABELS) == b"hello world\n"


def test_readme_failure_is_process_error(
    client: dockerrun.Client, engine: docker.DockerClient
) -> None:
    with pytest.raises(dockerrun.client.ProcessError) as info:
        client.run(BUSYBOX, "cat missing", labels=LABELS)
    err = info.value
    assert str(err).startswith(
        f"Command 'cat missing' in image '{BUSYBOX}' returned non-zero exit status 1: cat:"
    )
    assert "missing" in str(err)
    assert err.exit_status == 1
    assert err.command == "cat missing"
    assert err.image == BUSYBOX
    assert isinstance(err.stderr, bytes)
    assert b"missing" in err.stderr
    assert set(err.container) == {"Id", "Warnings"}
    assert err.container["Warnings"] is None
    assert isinstance(err, swarmless.SwarmlessError)
    assert gone(engine, err.container["Id"])()  # unlike 2016, nothing left behind
    again = pickle.loads(pickle.dumps(err))
    assert (again.exit_status, again.command, again.container) == (1, "cat missing", err.container)


def test_readme_detach_returns_the_create_answer(
    client: dockerrun.Client, engine: docker.DockerClient
) -> None:
    answer = client.run(BUSYBOX, "sleep 0.2", detach=True, labels=LABELS)
    assert set(answer) == {"Id", "Warnings"}
    assert answer["Warnings"] is None
    attrs = engine.api.inspect_container(answer["Id"])
    assert attrs["Config"]["Cmd"] == ["sleep", "0.2"]
    assert attrs["HostConfig"]["AutoRemove"] is True
    assert attrs["Config"]["Labels"]["swarmless.managed"] == "true"
    assert attrs["Config"]["Labels"]["swarmless.instance"] == SESSION_INSTANCE
    # Nobody waits for it (the CGI request that started it is over): the engine removes it.
    until(gone(engine, answer["Id"]), "the detached container to be removed")


def test_detach_kept_with_auto_remove_false(client: dockerrun.Client) -> None:
    answer = client.run(BUSYBOX, "echo kept", detach=True, auto_remove=False, labels=LABELS)
    try:
        assert client.wait(answer) == 0  # an int, as docker-py's wait was in 2016
        assert client.logs(answer) == b"kept\n"
    finally:
        client.remove_container(answer)


def test_from_env_version_and_timeout(engine: docker.DockerClient) -> None:
    for kwargs in ({"version": "1.24"}, {"version": "auto"}, {"timeout": 30}, {}):
        c = dockerrun.from_env(**kwargs)
        try:
            assert c.run(BUSYBOX, ["echo", "ok"], labels=LABELS) == b"ok\n"
        finally:
            c.close()
    c = dockerrun.Client.from_env(version="1.24")
    # The Docker SDK's, as docker-py's client had it.
    assert tuple(map(int, c.api_version.split("."))) >= (1, 24)
    c.close()


def test_from_env_refuses_what_it_cannot_honour(engine: docker.DockerClient) -> None:
    with pytest.raises(swarmless.InvalidArgument, match="version must be"):
        dockerrun.from_env(version="2.x")
    with pytest.raises(swarmless.InvalidArgument, match="timeout"):
        dockerrun.from_env(timeout=-1)
    with pytest.raises(swarmless.InvalidArgument, match="assert_hostname"):
        dockerrun.from_env(assert_hostname="engine.example")
    with pytest.raises(TypeError, match="'verison'"):
        dockerrun.from_env(verison="1.24")
    with pytest.raises(swarmless.InvalidArgument, match="DOCKER_TLS_VERIFY"):
        dockerrun.Client(tls=True)
    # An engine older than the API version the code asks for: said at the first call.
    newer = dockerrun.from_env(version="1.999")
    with pytest.raises(swarmless.EngineUnavailable, match=r"older than the 1\.999"):
        newer.run(BUSYBOX, "true", labels=LABELS)


def test_client_with_base_url(engine: docker.DockerClient) -> None:
    c = dockerrun.Client(base_url=engine_address(), version="1.24")
    try:
        assert c.run(BUSYBOX, "echo base", labels=LABELS) == b"base\n"
        assert c.version()["ApiVersion"]  # the Docker API of the client it subclassed
    finally:
        c.close()
    with pytest.raises(AttributeError, match="no attribute 'no_such_call'"):
        dockerrun.from_env().no_such_call  # noqa: B018


# -- the 2016 voting app's call --------------------------------------------------------


def test_voting_app_call(engine: docker.DockerClient, network: str, record_vote: str) -> None:
    """vote/app.py of serverless-docker-voting-app, its two dockerrun lines verbatim."""
    client = dockerrun.from_env(version="1.24")
    voter_id, vote = "a1b2c3", "b"
    answer = client.run(
        record_vote, [voter_id, vote], detach=True, network_mode=network, labels=LABELS
    )
    try:
        attrs = engine.api.inspect_container(answer["Id"])
        assert attrs["Args"] == [voter_id, vote]
        assert set(attrs["NetworkSettings"]["Networks"]) == {network}
        until(lambda: engine.api.logs(answer["Id"]) == b"a1b2c3 voted b\n", "the task's output")
    finally:
        engine.api.kill(answer["Id"])
    until(gone(engine, answer["Id"]), "the task's container to be removed")


def test_network_mode_joins_the_network(
    client: dockerrun.Client, engine: docker.DockerClient, network: str
) -> None:
    subnet = engine.api.inspect_network(network)["IPAM"]["Config"][0]["Subnet"]
    out = client.run(BUSYBOX, "hostname -i", network_mode=network, labels=LABELS)
    assert ipaddress.ip_address(out.decode().split()[0]) in ipaddress.ip_network(subnet)


def test_network_disabled(client: dockerrun.Client) -> None:
    assert client.run(BUSYBOX, "ls /sys/class/net", network_disabled=True, labels=LABELS) == (
        b"lo\n"
    )


# -- each option dockerrun passed on -----------------------------------------------------


def test_environment_as_dict_and_list(client: dockerrun.Client) -> None:
    cmd = ["sh", "-c", 'echo "$A $B"']
    assert client.run(BUSYBOX, cmd, environment={"A": "1", "B": 2}, labels=LABELS) == b"1 2\n"
    assert client.run(BUSYBOX, cmd, environment=["A=x", "B=y=z"], labels=LABELS) == b"x y=z\n"


def test_working_dir_user_hostname(client: dockerrun.Client) -> None:
    out = client.run(
        BUSYBOX,
        ["sh", "-c", "echo $(pwd) $(id -u) $(hostname)"],
        working_dir="/tmp",
        user="1234",
        hostname="voter",
        labels=LABELS,
    )
    assert out == b"/tmp 1234 voter\n"


def test_entrypoint_and_name(client: dockerrun.Client, engine: docker.DockerClient) -> None:
    name = f"swarmless-test-compat-{SESSION}-named"
    answer = client.run(
        BUSYBOX,
        "30",
        entrypoint="sleep",
        name=name,
        detach=True,
        labels=LABELS,
    )
    try:
        attrs = engine.api.inspect_container(answer["Id"])
        assert attrs["Name"] == f"/{name}"
        assert attrs["Config"]["Entrypoint"] == ["sleep"]
        assert attrs["Config"]["Cmd"] == ["30"]
    finally:
        engine.api.kill(answer["Id"])
    until(gone(engine, answer["Id"]), "the named container to be removed")


def test_mem_limit_nano_cpus_and_labels(
    client: dockerrun.Client, engine: docker.DockerClient
) -> None:
    answer = client.run(
        BUSYBOX,
        "sleep 30",
        detach=True,
        mem_limit="64m",
        nano_cpus=500_000_000,
        labels={**LABELS, "tier": "votes"},
    )
    try:
        attrs = engine.api.inspect_container(answer["Id"])
        assert attrs["HostConfig"]["Memory"] == 64 * 1024 * 1024
        assert attrs["HostConfig"]["NanoCpus"] == 500_000_000
        assert attrs["Config"]["Labels"]["tier"] == "votes"
    finally:
        engine.api.kill(answer["Id"])
    until(gone(engine, answer["Id"]), "the container to be removed")


def test_binds_and_volumes(client: dockerrun.Client, tmp_path: Path) -> None:
    (tmp_path / "ballot").write_text("cats\n")
    tmp_path.chmod(0o755)
    as_dict = client.run(
        BUSYBOX,
        "cat /data/ballot",
        binds={str(tmp_path): {"bind": "/data", "ro": True}},
        volumes=["/data"],
        labels=LABELS,
    )
    assert as_dict == b"cats\n"
    as_list = client.run(
        BUSYBOX,
        ["sh", "-c", "cat /in/ballot; touch /in/x 2>/dev/null || echo read-only"],
        binds=[f"{tmp_path}:/in:ro"],
        labels=LABELS,
    )
    assert as_list == b"cats\nread-only\n"
    # A path declared as a volume that no bind covers: an anonymous volume, removed too.
    out = client.run(
        BUSYBOX, "grep -c ' /scratch ' /proc/mounts", volumes=["/scratch"], labels=LABELS
    )
    assert out == b"1\n"


def test_stdout_and_stderr(client: dockerrun.Client) -> None:
    cmd = ["sh", "-c", "echo out; echo err >&2"]
    assert client.run(BUSYBOX, cmd, labels=LABELS) == b"out\n"
    assert client.run(BUSYBOX, cmd, stdout=False, stderr=True, labels=LABELS) == b"err\n"
    both = client.run(BUSYBOX, cmd, stderr=True, labels=LABELS)
    assert sorted(both.split()) == [b"err", b"out"]
    assert client.run(BUSYBOX, cmd, stdout=False, labels=LABELS) == b""


def test_missing_command_is_process_error(client: dockerrun.Client) -> None:
    with pytest.raises(dockerrun.client.ProcessError) as info:
        client.run(BUSYBOX, "no-such-program", labels=LABELS)
    assert info.value.exit_status == 127


def test_refused_and_unknown_options(client: dockerrun.Client, engine: docker.DockerClient) -> None:
    before = set(ours(engine))
    for option, value in [
        ("privileged", True),
        ("ports", [80]),
        ("port_bindings", {80: 8080}),
        ("cap_add", ["NET_ADMIN"]),
        ("host_config", {"Privileged": True}),
        ("volumes_from", ["other"]),
        ("pid_mode", "host"),
    ]:
        with pytest.raises(swarmless.InvalidArgument, match=f"{option} not supported"):
            client.run(BUSYBOX, "true", labels=LABELS, **{option: value})
    with pytest.raises(TypeError, match="'network', 'nmae'"):
        client.run(BUSYBOX, "true", network="x", nmae="y")
    # docker-py's defaults of the refused options ask for nothing: accepted.
    out = client.run(
        BUSYBOX, "echo ok", privileged=False, ports=None, cap_add=[], tty=False, labels=LABELS
    )
    assert out == b"ok\n"
    assert set(ours(engine)) == before  # nothing was started by a refused call


# -- the one-line dockerrun.py of a 2016 image --------------------------------------------

FRONT_END = """
import dockerrun

client = dockerrun.from_env(version="1.24")
print(client.run(IMAGE, "echo hello world", labels=LABELS))
try:
    client.run(IMAGE, "cat missing", labels=LABELS)
except dockerrun.client.ProcessError as e:
    print(e.exit_status, type(e).__name__)
print(sorted(n for n in dir(dockerrun) if not n.startswith("_")))
"""


def test_one_line_dockerrun_py(tmp_path: Path, engine: docker.DockerClient) -> None:
    (tmp_path / "dockerrun.py").write_text(
        "from swarmless.compat.dockerrun import *  # noqa: F403\n"
    )
    script = f"IMAGE = {BUSYBOX!r}\nLABELS = {LABELS!r}\n" + FRONT_END
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "b'hello world\\n'",
        "1 ProcessError",
        "['Client', 'client', 'from_env']",
    ]


def test_face_is_dockerruns() -> None:
    # dockerrun/__init__.py offered Client and from_env; dockerrun/client.py the rest.
    assert dockerrun.__all__ == ["Client", "client", "from_env"]
    assert set(dockerrun.client.__all__) == {
        "CREATE_KWARGS",
        "START_KWARGS",
        "Client",
        "ProcessError",
        "from_env",
    }
    assert issubclass(dockerrun.client.ProcessError, swarmless.FunctionFailed)
    assert "network_mode" in dockerrun.client.START_KWARGS
    assert "environment" in dockerrun.client.CREATE_KWARGS
