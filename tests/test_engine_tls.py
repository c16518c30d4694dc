"""An engine reached over TLS with client certificates (DOCKER_TLS_VERIFY, DOCKER_CERT_PATH).

The engine here listens only on its Unix socket, so the test puts a real TLS endpoint in
front of it on loopback: Python's ssl module, asking every client for a certificate of the
test's own CA, and relaying the bytes to the socket. Certificates are made with openssl.
Both ways of naming the engine work over it: ``DOCKER_HOST`` and an explicit address
(``SWARMLESS_DOCKER_HOST``, the ``docker_host`` setting); a client without a certificate,
or a server whose certificate the CA did not sign, is refused with a clear message.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from swarmless.engine import connect
from swarmless.exceptions import EngineUnavailable
from tests.waiting import wait_until

ENGINE_SOCKET = "/var/run/docker.sock"

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(folder: Path, name: str) -> None:
    key, cert = f"{name}-key.pem", f"{name}.pem"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
             f"/CN={name}", "-keyout", key, "-out", cert, cwd=folder)  # fmt: skip


def _signed(folder: Path, ca: str, name: str, *, server: bool) -> None:
    ext = folder / f"{name}.ext"
    ext.write_text(
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
        if server
        else "extendedKeyUsage=clientAuth\n"
    )
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
             "-keyout", f"{name}-key.pem", "-out", f"{name}.csr", cwd=folder)  # fmt: skip
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}-key.pem",
             "-CAcreateserial", "-days", "1", "-extfile", ext.name, "-out", f"{name}.pem",
             cwd=folder)  # fmt: skip


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tls")
    _ca(folder, "ca")
    _ca(folder, "other-ca")
    _signed(folder, "ca", "server", server=True)
    _signed(folder, "other-ca", "impostor", server=True)
    _signed(folder, "ca", "client", server=False)
    # DOCKER_CERT_PATH's layout: ca.pem, cert.pem, key.pem.
    client = folder / "client-dir"
    client.mkdir()
    shutil.copy(folder / "ca.pem", client / "ca.pem")
    shutil.copy(folder / "client.pem", client / "cert.pem")
    shutil.copy(folder / "client-key.pem", client / "key.pem")
    return folder


class TLSRelay:
    """TLS on 127.0.0.1 (client certificates required), bytes relayed to the engine."""

    def __init__(self, certs: Path, server: str) -> None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(certs / f"{server}.pem", certs / f"{server}-key.pem")
        ctx.load_verify_locations(certs / "ca.pem")
        ctx.verify_mode = ssl.CERT_REQUIRED
        self._ctx = ctx
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.handshakes_refused = 0
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []
        self._spawn(self._accept)

    def _spawn(self, target: object, *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        t.start()
        self._threads.append(t)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return
            raw.settimeout(10)
            try:
                conn = self._ctx.wrap_socket(raw, server_side=True)
            except (ssl.SSLError, OSError):
                self.handshakes_refused += 1
                raw.close()
                continue
            conn.settimeout(None)
            engine = socket.socket(socket.AF_UNIX)
            engine.connect(ENGINE_SOCKET)
            self._spawn(self._pipe, conn, engine)
            self._spawn(self._pipe, engine, conn)

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        for t in self._threads:
            t.join(5)


@pytest.fixture
def relay(certs: Path) -> Iterator[TLSRelay]:
    r = TLSRelay(certs, "server")
    yield r
    r.close()


def test_an_explicit_address_over_tls_with_client_certificates(
    certs: Path, relay: TLSRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    address = f"tcp://127.0.0.1:{relay.port}"
    monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
    monkeypatch.setenv("DOCKER_CERT_PATH", str(certs / "client-dir"))
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    client = connect(address, timeout=20)  # the docker_host setting's path
    try:
        assert client.ping()
        assert client.version()["ApiVersion"]
    finally:
        client.close()
    # DOCKER_HOST's path (docker.from_env) reads the same variables.
    monkeypatch.setenv("DOCKER_HOST", address)
    client = connect(None, timeout=20)
    try:
        assert client.ping()
    finally:
        client.close()
    assert relay.handshakes_refused == 0


def test_tls_refusals_are_clear(
    certs: Path, relay: TLSRelay, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    address = f"tcp://127.0.0.1:{relay.port}"
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
    # The certificate files are missing: an error naming them, not a plain-text try.
    monkeypatch.setenv("DOCKER_CERT_PATH", str(tmp_path / "nothing-here"))
    with pytest.raises(EngineUnavailable, match=r"(?i)cert"):
        connect(address, timeout=20)
    # No client certificate at all (TLS off): the relay refuses the handshake.
    monkeypatch.delenv("DOCKER_TLS_VERIFY")
    monkeypatch.delenv("DOCKER_CERT_PATH")
    with pytest.raises(EngineUnavailable):
        connect(address, timeout=20).ping()
    wait_until(lambda: relay.handshakes_refused >= 1, 10, "the relay to count the refusal")
    # A server whose certificate our CA did not sign: the client refuses it.
    impostor = TLSRelay(certs, "impostor")
    try:
        monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
        monkeypatch.setenv("DOCKER_CERT_PATH", str(certs / "client-dir"))
        with pytest.raises(EngineUnavailable, match=r"(?i)certificate|ssl"):
            connect(f"tcp://127.0.0.1:{impostor.port}", timeout=20).ping()
    finally:
        impostor.close()
