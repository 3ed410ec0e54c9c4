"""TLS settings without a broker: the certificates, the broker config, connect failures."""

from __future__ import annotations

import random
import socket
import ssl
from pathlib import Path

import pytest
from firmware_sim.outbox import Outbox
from firmware_sim.session import (
    ConnectSettings,
    SessionStats,
    VehicleSession,
    describe_connect_error,
)

from shared.infra.errors import InfraError
from shared.infra.mosquitto import Mosquitto
from shared.infra.tls import make_local_ca


def test_local_ca_signs_a_server_cert_for_loopback(tmp_path: Path) -> None:
    files = make_local_ca(tmp_path)
    assert files.key_file.stat().st_mode & 0o077 == 0, "the server key must be private"
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(files.cert_file, files.key_file)
    for host in ("127.0.0.1", "localhost"):
        client = ssl.create_default_context(cafile=str(files.ca_file))
        a, b = socket.socketpair()
        with a, b:
            s_side = server.wrap_socket(a, server_side=True, do_handshake_on_connect=False)
            c_side = client.wrap_socket(b, server_hostname=host, do_handshake_on_connect=False)
            _handshake(s_side, c_side)
            assert c_side.getpeercert() is not None
    other = make_local_ca(tmp_path / "other")
    client = ssl.create_default_context(cafile=str(other.ca_file))
    a, b = socket.socketpair()
    with a, b:
        s_side = server.wrap_socket(a, server_side=True, do_handshake_on_connect=False)
        c_side = client.wrap_socket(b, server_hostname="127.0.0.1", do_handshake_on_connect=False)
        with pytest.raises(ssl.SSLCertVerificationError):
            _handshake(s_side, c_side)


def _handshake(server: ssl.SSLSocket, client: ssl.SSLSocket) -> None:
    """Both sides of a handshake on one thread: non-blocking, turn by turn (bounded)."""
    server.setblocking(False)
    client.setblocking(False)
    done = {"s": False, "c": False}
    for _ in range(100):
        for name, side in (("c", client), ("s", server)):
            if done[name]:
                continue
            try:
                side.do_handshake()
                done[name] = True
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
        if all(done.values()):
            return
    raise AssertionError("handshake did not finish")


def test_mosquitto_tls_listener_block(tmp_path: Path) -> None:
    files = make_local_ca(tmp_path / "pki")
    plain = Mosquitto(tmp_path / "m", 1883).config()
    assert "cafile" not in plain and plain.count("listener ") == 1
    conf = Mosquitto(tmp_path / "m", 1883, tls=files, tls_port=8883).config()
    tail = conf[conf.index("listener 8883 127.0.0.1") :]
    assert f"cafile {files.ca_file}\n" in tail and f"certfile {files.cert_file}\n" in tail
    assert f"keyfile {files.key_file}\n" in tail and "require_certificate false\n" in tail
    # Auth is global (not per listener): the TLS port checks the same logins and roles, in
    # the dynamic-security plugin (mosquitto 2.0's acl_file would not check SUBSCRIBE).
    assert "per_listener_settings false" in conf and "allow_anonymous false" in conf
    assert conf.count("allow_anonymous") == 1 and conf.count("\nplugin ") == 1
    assert "acl_file" not in conf and "password_file" not in conf
    with pytest.raises(InfraError, match="tls_port"):
        Mosquitto(tmp_path / "m", 1883, tls=files)


def test_connect_errors_point_at_the_fix() -> None:
    verify = ssl.SSLCertVerificationError(1, "certificate verify failed")
    verify.verify_message = "self-signed certificate in certificate chain"
    assert "--tls-ca" in describe_connect_error(verify, tls=True)
    assert "self-signed" in describe_connect_error(verify, tls=True)
    assert "no broker listens" in describe_connect_error(ConnectionRefusedError(111), False)
    assert "TLS handshake timed out" in describe_connect_error(TimeoutError(), tls=True)


def test_failed_connects_back_off_exponentially(tmp_path: Path) -> None:
    # A bound port that does not listen: every connect is refused at once.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        conf = ConnectSettings(port=port, backoff_base_s=0.5, backoff_max_s=30.0)
        outbox = Outbox(tmp_path / "outbox.sqlite", 10)
        s = VehicleSession(
            0, "1FTEW1EP5JKD00001", "1.0", conf, outbox, random.Random(1), SessionStats()
        )
        s.make_client({})
        for k in range(1, 6):
            with pytest.raises(ConnectionRefusedError):
                s.connect()
            # Jitter keeps it within [cap / 2, cap]; the cap doubles with every failure.
            cap = conf.backoff_base_s * 2**k
            assert cap / 2 <= s.backoff() <= cap, (k, s.backoff())
        assert s.stats.connects == 0
