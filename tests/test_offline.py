"""Offline by design: training, translating, evaluating, inspecting and serving a model never open a network
connection. Every socket connection, datagram and name lookup is watched; any that is not to this machine
fails the command, and the test then fails on the record."""

from __future__ import annotations

import importlib.util
import ipaddress
import socket

import pytest

from charmt.cli import main

from conftest import write_pairs


class NetworkUsed(OSError):
    pass


def _is_local(address) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    host = address[0]
    if isinstance(host, bytes):
        host = host.decode()
    if host in ("localhost", "", None):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:  # a host name other than localhost
        return False


@pytest.fixture
def network(monkeypatch):
    """The outside connections attempted while the test runs (each one also raised NetworkUsed)."""
    attempts: list[str] = []

    def guard(kind, address):
        if not _is_local(address):
            attempts.append(f"{kind} {address!r}")
            raise NetworkUsed(f"charmt tried the network: {kind} {address!r}")

    real_connect, real_connect_ex, real_sendto = socket.socket.connect, socket.socket.connect_ex, socket.socket.sendto
    real_getaddrinfo, real_create_connection = socket.getaddrinfo, socket.create_connection

    def connect(self, address):
        guard("connect", address)
        return real_connect(self, address)

    def connect_ex(self, address):
        guard("connect", address)
        return real_connect_ex(self, address)

    def sendto(self, data, *args):
        guard("sendto", args[-1])
        return real_sendto(self, data, *args)

    def getaddrinfo(host, *args, **kwargs):
        guard("getaddrinfo", (host,))
        return real_getaddrinfo(host, *args, **kwargs)

    def create_connection(address, *args, **kwargs):
        guard("create_connection", address)
        return real_create_connection(address, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket.socket, "sendto", sendto)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket, "create_connection", create_connection)
    return attempts


def test_the_guard_catches_outside_connections_and_allows_loopback(network):
    with pytest.raises(NetworkUsed):
        socket.create_connection(("192.0.2.1", 80), timeout=1)  # TEST-NET-1: never reachable anyway
    with pytest.raises(NetworkUsed):
        socket.getaddrinfo("example.org", 443)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, pytest.raises(NetworkUsed):
        udp.sendto(b"x", ("8.8.8.8", 53))
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname(), timeout=5):
            pass
    assert len(network) == 3


def test_translate_evaluate_inspect_offline(network, tiny_model_dir, capsys):
    model, data = str(tiny_model_dir), str(tiny_model_dir.parent / "pairs.txt")
    assert main(["translate", model, "She eats the bread.", "Hi!", "--device", "cpu"]) == 0
    assert main(["translate", model, "--beam", "3", "--n-best", "2", "Hi!", "--device", "cpu"]) == 0
    assert main(["evaluate", model, data, "--device", "cpu", "--json"]) == 0
    assert main(["inspect", model, "Hi!", "Salut !"]) == 0
    assert "error" not in capsys.readouterr().err
    assert network == []


def test_train_offline(network, tmp_path, demo_lines, capsys):
    data = write_pairs(tmp_path / "pairs.txt", demo_lines[:40])
    assert main(["-q", "train", str(data), "--out", str(tmp_path / "model"), "--preset", "tiny", "--hidden-size",
                 "8", "--embedding-size", "4", "--epochs", "1", "--eval-sentences", "5", "--device", "cpu"]) == 0
    assert "error" not in capsys.readouterr().err
    assert network == []


@pytest.mark.skipif(importlib.util.find_spec("charmt.server") is None or importlib.util.find_spec("fastapi") is None,
                    reason="charmt.server or fastapi is not installed")
def test_serve_app_offline(network, tiny_model_dir):
    from fastapi.testclient import TestClient

    from charmt.decode import Translator
    from charmt.server import ServedModel, create_app

    app = create_app([ServedModel(Translator.load(tiny_model_dir, device="cpu"), "tiny", "en", "fr")])
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        page = client.get("/")
        assert page.status_code == 200
        translated = client.post("/api/translate", json={"texts": ["She eats the bread.", ""], "beam": 2})
        assert translated.status_code == 200 and len(translated.json()["translations"]) == 2
        assert client.post("/api/attention", json={"text": "Hi!"}).status_code == 200
        libre = client.post("/translate", data={"q": "Hi!", "source": "auto", "target": "fr", "alternatives": "1"})
        assert libre.status_code == 200 and libre.json()["detectedLanguage"]["language"] == "en"
        assert client.get("/languages").status_code == 200
    assert network == []
