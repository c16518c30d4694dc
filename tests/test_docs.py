"""Every command of README.md and docs/*.md, run as written against a real gateway.

The shell blocks of each document (```sh, ```console, ```bash) are run in order, each
command in bash on a terminal of 80 columns (a pty: the reader's shell), in the shell
state the commands before it left (exported variables, working directory), in a fresh
directory with its own HOME, against a :class:`RunningGateway` whose data directory is
that HOME's default one (``~/.local/share/swarmless``, token included) and whose address
stands for ``http://127.0.0.1:8080``. Every command must exit 0, and a table must fit the
80 columns. In a ``console`` block the lines after a ``$ command`` are its expected output:
each must appear, in order, in what the command printed (stdout and stderr, as a terminal
shows them), where call ids, image ids and decimals may differ and ``...`` is anything. A
call id the document shows stands for the one the test saw at that place: a later command
that names it gets the real one.

An HTML comment just before a block steers it (invisible on GitHub)::

    <!-- doctest: skip: WHY -->            not run (make up, a Swarm, a tool not installed)
    <!-- doctest: setup: COMMAND -->       run first, its output not checked
    <!-- doctest: cleanup: COMMAND -->     run after the block, its output not checked
    <!-- doctest: file: NAME -->            (before any block) its text is written to NAME
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.gateway_harness import TOKEN, RunningGateway
from tests.terminal import run_in_terminal

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: The address the documents use; the test's gateway stands for it.
DOC_URL = "http://127.0.0.1:8080"
SHELLS = ("sh", "console", "bash", "shell")
#: Seconds one command may take (an image build included).
DEADLINE = 300
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```\s*$", re.S | re.M)
_MARKER = re.compile(r"<!--\s*doctest:\s*(skip|setup|cleanup|file):\s*(.*?)\s*-->")


@dataclasses.dataclass
class Command:
    line: int
    text: str
    expected: list[str] = dataclasses.field(default_factory=list)
    checked: bool = True


@dataclasses.dataclass
class Block:
    document: str
    line: int
    lang: str
    commands: list[Command]
    skip: str | None = None


def _join_continued(lines: list[str]) -> list[tuple[int, str]]:
    """Lines with their backslash continuations joined, and their offsets."""
    out: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for i, raw in enumerate(lines):
        pending = (pending[0], pending[1] + "\n" + raw) if pending else (i, raw)
        if not raw.endswith("\\"):
            out.append(pending)
            pending = None
    if pending is not None:
        out.append(pending)
    return out


def parse(document: Path) -> list[Block]:
    """The shell blocks of a Markdown document, with their markers."""
    text = document.read_text()
    blocks: list[Block] = []
    for m in _FENCE.finditer(text):
        lang = m[1]
        start = text.count("\n", 0, m.start()) + 1
        before = text[: m.start()].rstrip().rsplit("\n", 3)[-3:]
        markers = [_MARKER.search(line) for line in before]
        # Markers stand right before the fence (several in a row, no other text between).
        found: list[tuple[str, str]] = []
        for marker in reversed(markers):
            if marker is None:
                break
            found.insert(0, (marker[1], marker[2]))
        name = document.name
        files = [value for kind, value in found if kind == "file"]
        if files:  # a file the commands after it use: written as it is shown
            write = f"cat > {files[0]} <<'DOCTEST_EOF'\n{m[2]}DOCTEST_EOF"
            blocks.append(Block(name, start, lang, [Command(start, write, checked=False)]))
            continue
        if lang not in SHELLS:
            continue
        commands: list[Command] = []
        body = m[2].splitlines()
        if lang == "console":
            current: Command | None = None
            for i, line in _join_continued(body):
                if line.startswith("$ "):
                    current = Command(start + 1 + i, line[2:])
                    commands.append(current)
                elif current is not None and line.strip():
                    current.expected.append(line)
        else:
            for i, line in _join_continued(body):
                if line.strip() and not line.lstrip().startswith("#"):
                    commands.append(Command(start + 1 + i, line))
        block = Block(name, start, lang, commands)
        for kind, value in found:
            if kind == "skip":
                block.skip = value
            elif kind == "setup":
                commands.insert(0, Command(start, value, checked=False))
            else:
                commands.append(Command(start, value, checked=False))
        blocks.append(block)
    return blocks


_TOKENS = re.compile(r"(\.\.\.|[0-9a-f]{12}-[0-9a-f]{12}|\b[0-9a-f]{12,64}\b|\d+\.\d+|\s+)")
_CALL_ID = re.compile(r"[0-9a-f]{12}-[0-9a-f]{12}")


def _pattern(expected: str) -> tuple[re.Pattern[str], dict[str, str]]:
    """A line of expected output as a pattern: call ids, image ids and decimals may differ,
    ``...`` is anything; and the call id each of its groups stands for."""
    parts = _TOKENS.split(re.sub(r"\s*\.\.\.\s*", "...", expected))
    out = []
    ids: dict[str, str] = {}
    for part in parts:
        if part == "...":
            out.append(".*")
        elif _CALL_ID.fullmatch(part):
            group = f"id{len(ids)}"
            ids[group] = part
            out.append(f"(?P<{group}>[0-9a-f]{{12}}-[0-9a-f]{{12}})")
        elif re.fullmatch(r"[0-9a-f]{12,64}", part) and re.search(r"\d", part):
            out.append(r"[0-9a-f]{12,64}")
        elif re.fullmatch(r"\d+\.\d+", part):
            out.append(r"\d+(\.\d+)?")
        elif part.isspace():
            out.append(r"\s+")
        else:
            out.append(re.escape(part))
    return re.compile("".join(out).strip()), ids


def _match(expected: list[str], output: str) -> tuple[str | None, dict[str, str]]:
    """The first expected line not found (in order) in ``output`` (None if all are), and
    the call ids of the document that stand for those the command printed."""
    lines = [line.strip() for line in output.splitlines()]
    at = 0
    seen: dict[str, str] = {}
    for want in expected:
        pattern, ids = _pattern(want.strip())
        while at < len(lines) and not (found := pattern.fullmatch(lines[at])):
            at += 1
        if at == len(lines):
            return want, seen
        seen.update({doc_id: found[group] for group, doc_id in ids.items()})
        at += 1
    return None, seen


#: Commands that print a table: it must fit the terminal's 80 columns.
_LISTINGS = {"ls", "describe", "invocations", "schedules", "logs"}


def _is_listing(command: str) -> bool:
    words = command.split("#")[0].split()
    if len(words) < 2 or words[0] != "swarmless" or words[1] not in _LISTINGS:
        return False
    # `logs CALL_ID` prints what the call printed, not a table
    return not any(re.fullmatch(r"[0-9a-f]{12}-[0-9a-f]{12}", w) for w in words)


def run(command: str, env: dict[str, str], cwd: Path, state: Path) -> tuple[int, str]:
    """Run one command line in bash on a terminal of 80 columns, in the shell state the
    commands before it left (exported variables, working directory): its exit status and
    what it printed."""
    script = "\n".join(
        [
            "set -a",  # a VAR=value of a document is there for the next commands
            f"[ -f {state}/env ] && . {state}/env",
            f'cd "$(cat {state}/cwd 2>/dev/null || pwd)"',
            command,
            "status=$?",
            f"export -p > {state}/env; pwd > {state}/cwd",
            "exit $status",
        ]
    )
    return run_in_terminal(
        ["bash", "--noprofile", "--norc", "-c", script], env, cwd=cwd, timeout=DEADLINE
    )


def _blocks() -> list[tuple[str, list[Block]]]:
    return [(str(d.relative_to(ROOT)), parse(d)) for d in DOCUMENTS]


def test_every_document_block_is_run_or_says_why_not() -> None:
    for document, blocks in _blocks():
        for block in blocks:
            if block.skip is not None:
                assert len(block.skip) > 10, f"{document}:{block.line}: say why it is skipped"
            assert block.commands, f"{document}:{block.line}: a shell block without a command"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def gw(engine: docker.DockerClient, labels: dict[str, str], home: Path) -> Iterator[RunningGateway]:
    data_dir = home / ".local" / "share" / "swarmless"
    data_dir.mkdir(parents=True)
    (data_dir / "token").write_text(TOKEN + "\n")
    g = RunningGateway(data_dir, labels).start()
    yield g
    g.stop(engine)


@pytest.fixture
def images(engine: docker.DockerClient) -> Iterator[None]:
    """Images the documents build (swarmless-fn/NAME): removed after, if they were not
    there before (another session's are left alone)."""

    def present() -> set[str]:
        return {
            tag
            for image in engine.images.list(filters={"reference": "swarmless-fn/*"})
            for tag in image.tags
        }

    before = present()
    yield
    for tag in present() - before:
        with contextlib.suppress(docker.errors.DockerException):
            engine.images.remove(tag, force=True)


#: The documents with commands to run (the others have no shell block, or skip them all).
RUNNABLE = [str(d.relative_to(ROOT)) for d in DOCUMENTS if any(b.skip is None for b in parse(d))]


@pytest.mark.parametrize("document", RUNNABLE, ids=lambda d: d)
def test_document_commands_run_as_written(
    document: str, gw: RunningGateway, home: Path, tmp_path: Path, images: None
) -> None:
    blocks = [b for b in parse(ROOT / document) if b.skip is None]
    work = tmp_path / "work"
    work.mkdir()
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "TERM": "xterm",
        "NO_COLOR": "1",
        "LANG": "C.UTF-8",
        "SWARMLESS_GATEWAY_URL": gw.url,
        "SWARMLESS_TOKEN": TOKEN,
        "SWARMLESS_INSTANCE": os.environ["SWARMLESS_INSTANCE"],
        "DOCKER_HOST": os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"),
    }
    state = tmp_path / "state"
    state.mkdir()
    ids: dict[str, str] = {}  # the document's call ids -> those the commands printed
    for c in (c for b in blocks for c in b.commands):
        text = c.text.replace(DOC_URL, gw.url)
        for doc_id, real in ids.items():
            text = text.replace(doc_id, real)
        where = f"{document}:{c.line}: {c.text}"
        status, output = run(text, env, work, state)
        if not c.checked:
            continue
        assert status == 0, f"{where}\nexit status {status}; it printed:\n{output}"
        if _is_listing(c.text):
            for line in output.splitlines():
                assert len(line) <= 80, f"{where}\nwider than a terminal of 80: {line}"
        expected = [e.replace(DOC_URL, gw.url) for e in c.expected]
        missing, seen = _match(expected, output)
        assert missing is None, f"{where}\nexpected {missing!r} in:\n{output}"
        ids.update(seen)


def test_markers_and_patterns() -> None:
    """The parser on a small document, without a gateway."""
    assert _pattern("built hello -> x:latest (335f01c0d5b0, warm)")[0].fullmatch(
        "built hello -> x:latest (9a1b2c3d4e5f, warm)"
    )
    pattern, ids = _pattern("01a2231e4521-d8b7ccd249bc   succeeded  200  2.0")
    found = pattern.fullmatch("01a2231e9999-d8b7ccd24aaa succeeded 200 13.25")
    assert found is not None
    assert ids == {"id0": "01a2231e4521-d8b7ccd249bc"}
    assert found["id0"] == "01a2231e9999-d8b7ccd24aaa"
    assert _pattern("hello ... done")[0].fullmatch("hello, world: done")
    assert not _pattern("HELLO")[0].fullmatch("HELLO!")
    assert _match(["a", "c"], "a\nb\nc\n") == (None, {})
    assert _match(["c", "a"], "a\nb\nc\n")[0] == "a"
    assert _match(["call 01a2231e4521-d8b7ccd249bc"], "x\ncall 01a2231e9999-d8b7ccd24aaa\n") == (
        None,
        {"01a2231e4521-d8b7ccd249bc": "01a2231e9999-d8b7ccd24aaa"},
    )
