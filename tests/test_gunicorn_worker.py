"""cli/gunicorn_worker.py writes gunicorn's bytes, in fewer sends.

Each case is one keep-alive connection served in this process by gunicorn's
own gevent worker and by ours, over real loopback sockets: the client sends
its requests, closes its sending side and reads until the server closes.
The two answers must be the same bytes (but for the Date header's second).
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import gevent.socket
import pytest
from gunicorn import util
from gunicorn.config import Config
from gunicorn.glogging import Logger
from gunicorn.workers.ggevent import GeventWorker

from cli import gunicorn_config
from cli.gunicorn_worker import Response, SettledConfig, Worker

BODY = b'{"status": "finished"}\n'

Start = Callable[[str, list[tuple[str, str]]], Any]


def app(environ: dict[str, Any], start_response: Start) -> Iterable[bytes]:
    """One route per way an answer can be framed."""
    path = environ["PATH_INFO"]
    length = [("Content-Length", str(len(BODY)))]
    if path == "/json":
        start_response("200 OK", [("Content-Type", "application/json"), *length])
        return [BODY]
    if path == "/pieces":  # a Content-Length answer in pieces, one of them empty
        start_response("200 OK", length)
        return [BODY[:5], b"", BODY[5:]]
    if path == "/empty":
        start_response("200 OK", [("Content-Length", "0")])
        return [b""]
    if path == "/nothing":  # no piece at all
        start_response("200 OK", [("Content-Length", "0")])
        return []
    if path == "/events":  # streamed: chunked on HTTP/1.1, to the close on 1.0
        start_response("200 OK", [("Content-Type", "text/event-stream")])
        return iter([b"data: 1\n\n", b"", b"data: 2\n\n"])
    if path == "/no-content":
        start_response("204 NO CONTENT", [("Content-Length", "0"), ("X-Request-ID", "a")])
        return [b""]
    if path == "/not-modified":
        start_response("304 NOT MODIFIED", length)
        return [BODY]
    if path == "/file":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return environ["wsgi.file_wrapper"](open(environ["HTTP_X_FILE"], "rb"))
    if path == "/echo":
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
    if path == "/fails":
        raise RuntimeError("before the head")
    if path == "/fails-late":

        def pieces() -> Iterator[bytes]:
            yield b"data: 1\n\n"
            raise RuntimeError("after the head")

        start_response("200 OK", [("Content-Type", "text/event-stream")])
        return pieces()
    start_response("404 NOT FOUND", length)
    return [BODY]


def request(path: str, method: str = "GET", version: str = "1.1", *headers: str) -> bytes:
    head = "".join(f"{h}\r\n" for h in ("Host: 127.0.0.1", *headers))
    return f"{method} {path} HTTP/{version}\r\n{head}\r\n".encode()


def make_worker(
    kind: type[GeventWorker],
    tmp_path: Path,
    keepalive: int = gunicorn_config.keepalive,
    **settings: Any,
) -> GeventWorker:
    cfg = Config()
    cfg.set("keepalive", keepalive)
    for name, value in settings.items():
        cfg.set(name, value)
    cfg.set("worker_tmp_dir", str(tmp_path))
    cfg.set("errorlog", str(tmp_path / "error.log"))
    worker = kind(0, 0, [], None, 30, cfg, Logger(cfg))
    worker.wsgi = app
    return worker


def serve(
    kind: type[GeventWorker],
    tmp_path: Path,
    sent: bytes,
    keepalive: int | None = None,
    keep_date: bool = False,
    **settings: Any,
) -> bytes:
    """What ``kind`` answers on one connection that sends ``sent`` and then shuts its
    side, or, given a ``keepalive``, keeps it open until the server closes it."""
    worker = make_worker(kind, tmp_path, keepalive or gunicorn_config.keepalive, **settings)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=10)
        server, addr = listener.accept()
        server.settimeout(10)

        def handle() -> None:
            # A header timeout interrupts gevent's sockets only (gunicorn's worker
            # process patches the socket module; this test process does not).
            conn = gevent.socket.socket(fileno=server.detach()) if keepalive else server
            worker.handle(listener, conn, addr)

        thread = threading.Thread(target=handle)
        thread.start()
        try:
            client.sendall(sent)
            if keepalive is None:
                client.shutdown(socket.SHUT_WR)
            received = b""
            while data := client.recv(65536):
                received += data
        finally:
            client.close()
            thread.join(10)
            worker.tmp.close()
            for handler in worker.log.error_log.handlers:  # gunicorn's logger keeps its file
                handler.close()
    if keep_date:
        return received
    return re.sub(rb"\r\nDate: [^\r]+\r\n", b"\r\nDate: -\r\n", received)


CASES = {
    "one piece": request("/json"),
    "pieces, one empty": request("/pieces"),
    "an empty piece": request("/empty"),
    "no piece": request("/nothing"),
    "streamed, chunked": request("/events"),
    "streamed to the close (HTTP/1.0)": request("/events", "GET", "1.0"),
    "HEAD": request("/json", "HEAD"),
    "HEAD of a stream": request("/events", "HEAD"),
    "204": request("/no-content"),
    "304": request("/not-modified"),
    "404": request("/elsewhere"),
    "Connection: close": request("/json", "GET", "1.1", "Connection: close"),
    "HTTP/1.0 keep-alive": request("/json", "GET", "1.0", "Connection: keep-alive"),
    "100-continue": request("/echo", "POST", "1.1", "Expect: 100-continue", "Content-Length: 4")
    + b"ping",
    "fails before the head (500)": request("/fails"),
    "fails after the head (cut)": request("/fails-late") + request("/json"),
    "a bad request (400)": b"GET /json HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header\r\n\r\n",
    "keep-alive, every kind in turn": b"".join(
        request(path, method)
        for path, method in (
            ("/json", "GET"),
            ("/events", "GET"),
            ("/no-content", "GET"),
            ("/json", "HEAD"),
            ("/not-modified", "GET"),
            ("/nothing", "GET"),
            ("/pieces", "GET"),
        )
    ),
}


@pytest.mark.parametrize("sent", CASES.values(), ids=CASES.keys())
def test_the_same_bytes_as_gunicorns_gevent_worker(sent: bytes, tmp_path: Path) -> None:
    theirs = serve(GeventWorker, tmp_path, sent)
    assert theirs  # every case answers something
    assert serve(Worker, tmp_path, sent) == theirs


IDLE = {
    "nothing sent": b"",
    "idle after two answers": request("/json") + request("/events"),
    "stopped within a head": request("/json") + b"GET /json HTTP/1.1\r\nHost: 127.0",
}


@pytest.mark.parametrize("sent", IDLE.values(), ids=IDLE.keys())
def test_an_idle_or_unfinished_connection_is_closed_at_the_header_timeout(
    sent: bytes, tmp_path: Path
) -> None:
    """Every head is read under the timeout: the connection the client keeps open
    is closed, with the same bytes."""
    theirs = serve(GeventWorker, tmp_path, sent, keepalive=1)
    assert serve(Worker, tmp_path, sent, keepalive=1) == theirs
    assert theirs.count(b"HTTP/1.1 200 OK") == sent.count(b"HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")


def test_the_date_is_gunicorns_of_the_second_it_was_sent(tmp_path: Path) -> None:
    before = int(time.time())
    answer = serve(Worker, tmp_path, request("/json") + request("/json"), keep_date=True)
    after = int(time.time())
    dates = re.findall(rb"\r\nDate: ([^\r]+)\r\n", answer)
    assert len(dates) == 2
    for date in dates:
        second = int(parsedate_to_datetime(date.decode()).timestamp())
        assert before <= second <= after
        assert date.decode() == util.http_date(second)


def recording_hooks(seen: list[tuple[str, str, Any]]) -> tuple[Any, Any]:
    """A pre_request and a post_request hook (of the arities gunicorn checks) noting their calls."""

    def pre(worker: Any, req: Any) -> None:
        seen.append(("pre", req.path, None))

    def post(worker: Any, req: Any, environ: Any, resp: Any) -> None:
        seen.append(("post", req.path, resp.status))

    return pre, post


def test_request_hooks_are_called_as_gunicorns_worker_calls_them(tmp_path: Path) -> None:
    """Ours skips gunicorn's default hooks (a debug line, and nothing), not anyone's."""
    sent = request("/json") + request("/no-content")
    calls: dict[type, list[tuple[str, str, Any]]] = {}
    for kind in (GeventWorker, Worker):
        pre, post = recording_hooks(calls.setdefault(kind, []))
        serve(kind, tmp_path, sent, pre_request=pre, post_request=post)
    assert calls[Worker] == calls[GeventWorker]
    assert [what for what, _, _ in calls[Worker]] == ["pre", "post", "pre", "post"]


def test_gunicorns_debug_line_is_written_when_its_log_is_at_debug(tmp_path: Path) -> None:
    logged = {}
    for kind in (GeventWorker, Worker):
        serve(kind, tmp_path, request("/json"), loglevel="debug")
        logged[kind] = (tmp_path / "error.log").read_text()
        (tmp_path / "error.log").unlink()
    assert "GET /json" in logged[GeventWorker] and "GET /json" in logged[Worker]


def test_a_file_answer_is_the_same_bytes(tmp_path: Path) -> None:
    page = tmp_path / "page.txt"
    page.write_bytes(b"x" * 100_000)
    sent = request("/file", "GET", "1.1", f"X-File: {page}") + request("/json")
    theirs = serve(GeventWorker, tmp_path, sent)
    assert theirs.count(b"x" * 100_000) == 1
    assert serve(Worker, tmp_path, sent) == theirs


class Recorded(socket.socket):
    """A real socket that notes what each send and sendall call was given."""

    calls: list[bytes]

    def send(self, data: Any, flags: int = 0) -> int:
        self.calls.append(bytes(data))
        return super().send(data, flags)

    def sendall(self, data: Any, flags: int = 0) -> None:
        self.calls.append(bytes(data))
        super().sendall(data, flags)


def sends(path: str, method: str = "GET") -> tuple[list[bytes], list[int]]:
    """The sends :class:`Response` makes for one answer of :func:`app`, and how
    many of them had gone after each piece the application gave."""
    from gunicorn.http.parser import RequestParser

    reader, writer = socket.socketpair()
    with reader, writer:
        writer.sendall(request(path, method))
        req = next(RequestParser(Config(), reader, ("127.0.0.1", 1)))
        out = Recorded(fileno=writer.detach())
        out.calls = []
        response = Response(req, out, Config())
        gone = []
        for piece in app({"PATH_INFO": path}, response.start_response):
            response.write(piece)
            gone.append(len(out.calls))
        response.close()
        out.close()
    return out.calls, gone


def test_an_answer_of_one_piece_goes_in_one_send() -> None:
    (only,), _ = sends("/json")
    assert only.startswith(b"HTTP/1.1 200 OK\r\n") and only.endswith(b"\r\n\r\n" + BODY)
    (head,), _ = sends("/json", "HEAD")
    assert head.endswith(b"\r\n\r\n")
    (nothing,), _ = sends("/nothing")
    assert nothing.endswith(b"Content-Length: 0\r\n\r\n")


def test_a_stream_goes_piece_by_piece_with_the_head_on_the_first() -> None:
    (first, second, end), gone = sends("/events")
    assert first.startswith(b"HTTP/1.1 200 OK\r\n")
    assert first.endswith(b"\r\n\r\n9\r\ndata: 1\n\n\r\n")
    assert (second, end) == (b"9\r\ndata: 2\n\n\r\n", b"0\r\n\r\n")
    assert gone == [1, 1, 2]  # each piece as it comes (the empty one sends nothing)
    # A stream's HEAD (a held /events) is answered at its first piece, not its end.
    (head,), gone = sends("/events", "HEAD")
    assert head.endswith(b"Content-Type: text/event-stream\r\n\r\n")
    assert gone == [1, 1, 1]


def test_the_settled_config_reads_every_setting_as_gunicorns_does(tmp_path: Path) -> None:
    cfg = Config()
    for name in dir(gunicorn_config):  # our settings module, as gunicorn loads it
        if name in cfg.settings:
            cfg.set(name, getattr(gunicorn_config, name))
    settled = SettledConfig.of(cfg)
    for _ in range(2):  # the first read keeps the value, the second reads what was kept
        for name in cfg.settings:
            assert getattr(settled, name) == getattr(cfg, name), name
        assert settled.is_ssl == cfg.is_ssl
        assert settled.forwarded_allow_networks() == cfg.forwarded_allow_networks()
    assert not set(vars(cfg)) & set(cfg.settings)  # the master's own keeps nothing
    kept = {name for name in cfg.settings if not hasattr(Config, name)}  # not its properties
    assert kept <= set(vars(settled))
    with pytest.raises(AttributeError):
        settled.not_a_setting  # noqa: B018
    worker = make_worker(Worker, tmp_path)
    assert type(worker.cfg) is SettledConfig and worker.cfg.keepalive == gunicorn_config.keepalive
    worker.tmp.close()
