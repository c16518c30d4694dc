"""Templates, ``swarmless new``, ``build_function`` and ``swarmless build``, on the real engine.

Images are tagged under ``swarmless-test-b/`` and labelled ``swarmless.test=helper-b``;
the module fixture removes them. Containers are run through ``swarmless.from_env().run``
(labelled and removed on every path).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest
import yaml
from click.testing import CliRunner

import swarmless
from swarmless.build import (
    BuildError,
    build_function,
    dockerfile,
    runtime_files,
    system_ca_bundle,
)
from swarmless.cli import main
from swarmless.cli.new import TEMPLATES, write_template
from swarmless.config import Settings
from swarmless.exceptions import ImageNotFound, InvalidArgument
from swarmless.runtime.package import INIT as PACKAGE_INIT
from swarmless.spec import load_file
from tests.conftest import BUSYBOX, PYTHON
from tests.test_runtime import (
    TEST_LABEL,
    FakeGateway,
    bridge_gateway_ip,
    helper_engine_fixture,  # noqa: F401  (the helper_engine fixture)
    start_worker,
)

RUN_LABELS = dict(TEST_LABEL)


@pytest.fixture(scope="module")
def tags(helper_engine: docker.DockerClient) -> Iterator[Callable[[str], str]]:
    """Hands out image tags under swarmless-test-b/ and removes those images at the end."""
    made: list[str] = []
    run = uuid.uuid4().hex[:8]

    def tag(name: str) -> str:
        made.append(f"swarmless-test-b/{name}:{run}")
        return made[-1]

    yield tag
    for name in made:
        with contextlib.suppress(docker.errors.DockerException):
            helper_engine.images.remove(name, force=True)
    for image in helper_engine.images.list(filters={"label": "swarmless.test=helper-b"}):
        with contextlib.suppress(docker.errors.DockerException):
            helper_engine.images.remove(image.id, force=True)


@pytest.fixture
def sdk() -> Iterator[swarmless.Client]:
    client = swarmless.from_env()
    yield client
    client.close()


def _new(tmp_path: Path, name: str, template: str) -> Path:
    folder = tmp_path / name
    result = CliRunner().invoke(main, ["new", name, "--template", template, "--dir", str(folder)])
    assert result.exit_code == 0, result.output
    return folder


# -- swarmless new ------------------------------------------------------------------------


@pytest.mark.parametrize("template", TEMPLATES)
def test_new_writes_a_valid_function_folder(tmp_path: Path, template: str) -> None:
    folder = _new(tmp_path, "hello-b", template)
    files = {p.name for p in folder.iterdir()}
    assert {"swarmless.yml", "README.md"} <= files
    for path in folder.iterdir():
        text = path.read_text()
        assert "NAME" not in text.replace("SERVER_NAME", ""), f"placeholder left in {path.name}"
    assert "# hello-b" in (folder / "README.md").read_text()
    # The yml validates with the project's own spec loader.
    (spec,) = load_file(folder / "swarmless.yml")
    assert spec.name == "hello-b"
    assert spec.build == str(folder)
    if template == "cgi-shell":
        assert spec.mode == "cgi"
        assert spec.command == ["/function/handler.sh"]
        assert (folder / "handler.sh").stat().st_mode & 0o111
        assert Settings.load(folder / "swarmless.yml").base_image in (BUSYBOX, PYTHON)
    elif template == "node":
        assert (spec.mode, spec.command) == ("cgi", ["node", "/function/handler.js"])
        assert Settings.load(folder / "swarmless.yml").base_image == "swarmless/node:bookworm"
    elif template == "go":
        assert (spec.mode, spec.command) == ("cgi", ["/handler"])
        assert (folder / "Dockerfile").is_file()
    else:
        assert spec.mode == "warm"
        assert spec.handler_kind == ("wsgi" if template == "wsgi" else "python")


def test_new_refuses_to_overwrite(tmp_path: Path) -> None:
    folder = _new(tmp_path, "taken", "python")
    before = (folder / "handler.py").read_text()
    result = CliRunner().invoke(main, ["new", "taken", "--dir", str(folder)])
    assert result.exit_code == 1
    assert "already exists and is not empty; refusing to overwrite" in result.output
    assert (folder / "handler.py").read_text() == before
    with pytest.raises(InvalidArgument, match="lower-case DNS label"):
        write_template("Bad_Name", "python", tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


# -- the generated Dockerfile -------------------------------------------------------------


def test_dockerfile_shapes() -> None:
    warm = dockerfile(base_image="b:1", mode="warm", requirements=True, ca_bundle=True)
    assert warm.splitlines()[0] == "FROM b:1"
    assert "WORKDIR /function" in warm
    assert "COPY swarmless/ /opt/swarmless/swarmless/" in warm
    assert "ENV PYTHONPATH=/opt/swarmless" in warm
    assert "SSL_CERT_FILE=/etc/swarmless-ca.pem PIP_CERT=/etc/swarmless-ca.pem" in warm
    assert "python3 -m venv /opt/venv && " in warm
    assert "/opt/venv/bin/pip install --no-cache-dir" in warm
    assert "ENV PATH=/opt/venv/bin:$PATH VIRTUAL_ENV=/opt/venv" in warm
    assert warm.rstrip().endswith('CMD ["python3", "-m", "swarmless.runtime"]')
    # requirements before the folder, so editing code does not reinstall packages
    assert warm.index("requirements.txt") < warm.index("COPY function/ /function/")
    cgi = dockerfile(base_image=BUSYBOX, mode="cgi", command=["/function/handler.sh"])
    assert "python3" not in cgi
    assert "RUN" not in cgi
    assert cgi.rstrip().endswith('CMD ["/function/handler.sh"]')
    # Every function carries the runtime's client (swarmless.from_env() inside it).
    assert "COPY swarmless/ /opt/swarmless/swarmless/" in cgi
    assert set(runtime_files()) >= {
        "swarmless/__init__.py",
        "swarmless/runtime/__init__.py",
        "swarmless/runtime/__main__.py",
        "swarmless/runtime/client.py",
    }
    assert runtime_files()["swarmless/__init__.py"] == PACKAGE_INIT.encode()


# -- build_function on the engine ---------------------------------------------------------


def test_cgi_shell_template_builds_on_busybox_and_answers_cgi(
    tmp_path: Path,
    helper_engine: docker.DockerClient,
    tags: Callable[[str], str],
    sdk: swarmless.Client,
) -> None:
    folder = _new(tmp_path, "shell-b", "cgi-shell")
    settings = Settings.load(folder / "swarmless.yml")
    (spec,) = load_file(folder / "swarmless.yml")
    lines: list[str] = []
    tag = tags("cgi-shell")
    image_id = build_function(
        folder,
        tag=tag,
        mode=spec.mode,
        client=helper_engine,
        base_image=settings.base_image,
        progress=lines.append,
        labels=dict(TEST_LABEL),
        function=spec.name,
        command=spec.command,
    )
    assert image_id.startswith("sha256:")
    assert any(line.startswith("Step 1/") for line in lines)
    image = helper_engine.images.get(tag)
    assert image.id == image_id
    assert image.labels["swarmless.managed"] == "true"
    assert image.labels["swarmless.function"] == "shell-b"
    assert image.labels["swarmless.test"] == "helper-b"
    out = sdk.run(
        tag,
        stdin=b"abc",
        env={
            "GATEWAY_INTERFACE": "CGI/1.1",
            "REQUEST_METHOD": "POST",
            "QUERY_STRING": "x=1&name=Ada",
            "CONTENT_LENGTH": "3",
            "CONTENT_TYPE": "text/plain",
        },
        labels=RUN_LABELS,
        timeout=30,
    )
    head, _, body = out.partition(b"\n\n")
    assert head.split(b"\n") == [b"Status: 200 OK", b"Content-Type: text/plain; charset=utf-8"]
    assert body == b"Hello, Ada! (POST from a shell CGI)\nYou sent 3 bytes: abc\n"


def test_python_template_image_carries_the_runtime(
    tmp_path: Path,
    helper_engine: docker.DockerClient,
    tags: Callable[[str], str],
    sdk: swarmless.Client,
) -> None:
    folder = _new(tmp_path, "py-b", "python")
    tag = tags("python")
    build_function(
        folder,
        tag=tag,
        mode="warm",
        client=helper_engine,
        base_image=PYTHON,
        labels=dict(TEST_LABEL),
    )
    image = helper_engine.images.get(tag)
    assert image.labels["swarmless.function"] == "python"  # no function=: the tag's name
    assert image.attrs["Config"]["Cmd"] == ["python3", "-m", "swarmless.runtime"]
    assert image.attrs["Config"]["WorkingDir"] == "/function"
    script = (
        "import os, sys, swarmless.runtime, swarmless.runtime.handlers;"
        "print(swarmless.runtime.__file__);"
        "print(sorted(os.listdir('/opt/swarmless/swarmless')));"
        "print(sorted(f for f in os.listdir('/function') if not f.startswith('.')));"
        "print(sorted(m for m in sys.modules if m.startswith('swarmless')))"
    )
    out = sdk.run(tag, ["python3", "-c", script], labels=RUN_LABELS, timeout=30, text=True)
    assert isinstance(out, str)
    lines = out.splitlines()
    assert lines[0] == "/opt/swarmless/swarmless/runtime/__init__.py"
    assert lines[1] == "['__init__.py', '__pycache__', 'runtime']"
    assert lines[2] == "['README.md', 'handler.py', 'swarmless.yml']"
    assert "swarmless.runtime.loop" in lines[3]


@pytest.mark.parametrize("template", ["python-http", "wsgi"])
def test_other_warm_templates_build(
    template: str,
    tmp_path: Path,
    helper_engine: docker.DockerClient,
    tags: Callable[[str], str],
    sdk: swarmless.Client,
) -> None:
    folder = _new(tmp_path, "web-b", template)
    (spec,) = load_file(folder / "swarmless.yml")
    tag = tags(template)
    build_function(
        folder, tag=tag, mode="warm", client=helper_engine, base_image=PYTHON, labels=TEST_LABEL
    )
    module = spec.handler.split(":")[0] if spec.handler else ""
    out = sdk.run(tag, ["python3", "-c", f"import {module}"], labels=RUN_LABELS, timeout=30)
    assert out == b""


def test_requirements_need_pip(
    tmp_path: Path, helper_engine: docker.DockerClient, tags: Callable[[str], str]
) -> None:
    folder = _new(tmp_path, "needs-pip", "cgi-shell")
    (folder / "requirements.txt").write_text("six\n")
    with pytest.raises(BuildError) as info:
        build_function(
            folder,
            tag=tags("needs-pip"),
            mode="cgi",
            client=helper_engine,
            base_image=BUSYBOX,
            labels=dict(TEST_LABEL),
        )
    assert "has no pip and venv" in info.value.summary
    assert "make images" in info.value.summary
    assert "pip install" in info.value.step


def test_requirements_install_from_the_package_registry_once(
    tmp_path: Path,
    helper_engine: docker.DockerClient,
    tags: Callable[[str], str],
    sdk: swarmless.Client,
) -> None:
    """A real package from PyPI, on the local base (pip and venv), through this machine's
    CA bundle; editing the code reuses the installed layer, editing requirements.txt not."""
    folder = _new(tmp_path, "deps-b", "python")
    (folder / "requirements.txt").write_text("six==1.16.0\n")
    tag = tags("deps-b")
    ca = system_ca_bundle()

    def build() -> list[str]:
        lines: list[str] = []
        build_function(
            folder,
            tag=tag,
            mode="warm",
            client=helper_engine,
            base_image=PYTHON,
            ca_bundle=ca,
            labels=dict(TEST_LABEL),
            progress=lines.append,
        )
        return lines

    build()
    code = "import six, sys; print(six.__version__, sys.prefix)"
    out = sdk.run(tag, ["python3", "-c", code], labels=RUN_LABELS, timeout=30)
    assert out == b"1.16.0 /opt/venv\n"
    (folder / "handler.py").write_text((folder / "handler.py").read_text() + "\n# edited\n")
    lines = build()
    pip_step = next(i for i, line in enumerate(lines) if "pip install" in line)
    assert "Using cache" in lines[pip_step + 1], lines[pip_step : pip_step + 3]


def test_a_failing_step_reports_its_output(
    tmp_path: Path, helper_engine: docker.DockerClient, tags: Callable[[str], str]
) -> None:
    folder = tmp_path / "own"
    folder.mkdir()
    (folder / "Dockerfile").write_text(
        f"FROM {BUSYBOX}\nRUN echo first-step-ok\nRUN echo about-to-fail && exit 3\n"
    )
    with pytest.raises(BuildError) as info:
        build_function(
            folder,
            tag=tags("own"),
            mode="oneshot",
            client=helper_engine,
            base_image=PYTHON,  # unused: the folder's own Dockerfile wins
            labels=dict(TEST_LABEL),
        )
    err = info.value
    assert err.step == "RUN echo about-to-fail && exit 3"
    assert "about-to-fail" in err.output
    assert "first-step-ok" not in err.output  # only the failing step's output
    assert "failed at step 3 (RUN echo about-to-fail && exit 3)" in err.summary
    assert "non-zero code: 3" in err.summary
    assert "about-to-fail" in err.message  # the library's message carries the output


def test_missing_base_image(
    tmp_path: Path, helper_engine: docker.DockerClient, tags: Callable[[str], str]
) -> None:
    folder = _new(tmp_path, "nobase", "cgi-shell")
    with pytest.raises(ImageNotFound) as info:
        build_function(
            folder,
            tag=tags("nobase"),
            mode="cgi",
            client=helper_engine,
            base_image="swarmless-test-b/absent:nope",
            labels=dict(TEST_LABEL),
        )
    assert info.value.image == "swarmless-test-b/absent:nope"


def test_cli_build(tmp_path: Path, tags: Callable[[str], str]) -> None:
    folder = _new(tmp_path, "cli-b", "cgi-shell")
    tag = tags("cli-b")
    result = CliRunner().invoke(main, ["build", str(folder), "--tag", tag, "--base", BUSYBOX])
    assert result.exit_code == 0, result.output
    assert f"built cli-b -> {tag}" in result.output
    # A broken script step: one clear error line, exit 1.
    (folder / "Dockerfile").write_text(f"FROM {BUSYBOX}\nRUN false\n")
    result = CliRunner().invoke(main, ["build", str(folder), "--tag", tag])
    assert result.exit_code == 1
    assert "error: cli-b: building" in result.output
    assert "failed at step 2 (RUN false)" in result.output
    doc = yaml.safe_load((folder / "swarmless.yml").read_text())
    assert "functions" in doc


# -- idle memory of the runtime ----------------------------------------------------------


@pytest.mark.parametrize("concurrency", [1, 4])
def test_idle_rss_of_the_runtime_in_a_container(
    concurrency: int,
    tmp_path: Path,
    helper_engine: docker.DockerClient,
    tags: Callable[[str], str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    tag = tags(f"rss-{concurrency}")
    if concurrency == 1:
        write_template("rss-b", "python", tmp_path / "rss-b")
    else:
        write_template("rss-b", "wsgi", tmp_path / "rss-b")
    build_function(
        tmp_path / "rss-b",
        tag=tag,
        mode="warm",
        client=helper_engine,
        base_image=PYTHON,
        labels=dict(TEST_LABEL),
    )
    ip = bridge_gateway_ip(helper_engine)
    gw = FakeGateway(host=ip, poll_window=30)
    container = None
    try:
        container = start_worker(helper_engine, tag, gw.url(ip), concurrency=concurrency)
        # Idle: every poller is waiting in a long poll.
        gw.wait_for(lambda: gw.holding == concurrency, 20)
        status = container.exec_run(["cat", "/proc/1/status"]).output.decode()
        rss_kb = int(status.split("VmRSS:")[1].split()[0])
        cgroup = helper_engine.api.stats(container.id, stream=False)["memory_stats"]
        with capsys.disabled():
            print(
                f"\n[runtime] idle RSS, concurrency {concurrency}: {rss_kb / 1024:.1f} MiB "
                f"(container memory usage {cgroup.get('usage', 0) / 2**20:.1f} MiB)"
            )
        assert rss_kb < 30 * 1024
    finally:
        if container is not None:
            container.remove(force=True)
        gw.close()
