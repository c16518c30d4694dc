"""The build context of a function image, made in memory as a tar (its layout is in
:mod:`swarmless.build`'s docstring): the folder, the runtime, the CA bundle."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from swarmless.runtime.package import INIT as PACKAGE_INIT

__all__ = ["make_context", "runtime_files", "system_ca_bundle"]

#: Never sent to the engine: version control, caches, virtual environments.
_SKIP_DIRS = frozenset({".git", ".hg", ".svn", "__pycache__", ".venv", ".mypy_cache", ".tox"})
_SKIP_SUFFIXES = (".pyc", ".pyo")
#: Where the host's own CA bundle usually is (Debian, Fedora, Alpine, macOS with Homebrew...).
_SYSTEM_CA = (
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
)


def system_ca_bundle() -> Path | None:
    """This machine's CA bundle (``SSL_CERT_FILE``, else the usual places), or None.

    pip in a build container trusts it too, so that requirements install behind a proxy
    that re-signs TLS as well as they do here.
    """
    import os

    for candidate in (os.environ.get("SSL_CERT_FILE", ""), *_SYSTEM_CA):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def runtime_files() -> dict[str, bytes]:
    """What a function image carries of swarmless: ``swarmless/__init__.py`` (the package
    face of a function container, :mod:`swarmless.runtime.package`) and the runtime's
    modules, keyed by their path under ``/opt/swarmless``."""
    runtime = Path(__file__).parent / "runtime"
    files = {"swarmless/__init__.py": PACKAGE_INIT.encode()}
    for path in sorted(runtime.glob("*.py")):
        files[f"swarmless/runtime/{path.name}"] = path.read_bytes()
    return files


def _skip(rel: Path) -> bool:
    return any(part in _SKIP_DIRS for part in rel.parts) or rel.name.endswith(_SKIP_SUFFIXES)


def _normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # Owner and time say nothing about the function and would only break the build cache.
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    return info


def _add_folder(tar: tarfile.TarFile, folder: Path, prefix: str) -> None:
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if _skip(rel):
            continue
        arcname = f"{prefix}{rel.as_posix()}"
        tar.add(path, arcname=arcname, recursive=False, filter=_normalise)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = _normalise(tarfile.TarInfo(name))
    info.size = len(data)
    info.mode = mode
    tar.addfile(info, io.BytesIO(data))


def make_context(folder: Path, *, generated: str | None, ca_bundle: Path | None) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        if generated is None:
            _add_folder(tar, folder, "")
        else:
            _add_bytes(tar, "Dockerfile", generated.encode())
            folder_entry = _normalise(tarfile.TarInfo("function"))
            folder_entry.type, folder_entry.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(folder_entry)  # COPY function/ needs it even for an empty folder
            _add_folder(tar, folder, "function/")
            for name, data in runtime_files().items():
                _add_bytes(tar, name, data)
            if ca_bundle is not None:
                _add_bytes(tar, "swarmless-ca.pem", ca_bundle.read_bytes())
    buf.seek(0)
    return buf
