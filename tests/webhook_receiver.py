"""A webhook receiver for the tests: a real HTTP server (http.server) in a
thread on loopback, answering from a script and recording every request."""

from __future__ import annotations

import functools
import re
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest


@dataclass
class Received:
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes


class Receiver:
    """Answers each POST with the next ``(status, headers)`` of ``answers``
    (the last one repeats), and keeps what it got in ``received``."""

    def __init__(
        self,
        answers: list[tuple[int, dict[str, str]]],
        host: str = "127.0.0.1",
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.answers = list(answers)
        self.received: list[Received] = []
        self.got = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                headers = {name.lower(): value for name, value in self.headers.items()}
                receiver.received.append(Received(self.path, headers, body))
                status, extra = receiver.answers[
                    min(len(receiver.received), len(receiver.answers)) - 1
                ]
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
                receiver.got.set()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.scheme = "http"
        if tls is not None:  # https: the handshake runs as each connection is accepted
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
        self.host = host
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str = "/hook", host: str | None = None) -> str:
        return f"{self.scheme}://{host or self.host}:{self.port}{path}"

    def start(self) -> Receiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def receiver() -> Iterator[type[Receiver]]:
    """Factory: ``receiver([(200, {})])`` starts one; each is stopped after the test."""
    started: list[Receiver] = []

    def start(
        answers: list[tuple[int, dict[str, str]]],
        host: str = "127.0.0.1",
        tls: ssl.SSLContext | None = None,
    ) -> Receiver:
        server = Receiver(answers, host, tls).start()
        started.append(server)
        return server

    yield start  # type: ignore[misc]
    for server in started:
        server.stop()


README = Path(__file__).resolve().parents[1] / "README.md"


@functools.cache
def readme_verify() -> Callable[..., bool]:
    """The receiver example in the README, taken from there, so it is tested as published."""
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    (code,) = [block for block in blocks if "def verify(" in block]
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)  # our own README
    verify: Callable[..., bool] = namespace["verify"]
    return verify


def verify(secret: str, got: Received) -> bool:
    """Whether the README's receiver would accept ``got``."""
    return readme_verify()(secret, got.headers, got.body)
