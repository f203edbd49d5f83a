"""gunicorn's gevent worker, writing each answer in as few sends as it can.

gunicorn's HTTP/1 ``Response`` sends an answer's head as soon as it has made
it, then each body piece, every one through gevent's ``sendall``, which asks
the kernel for the socket's send buffer size before it sends. An answer of
one body piece (every JSON answer here) so costs four system calls and
reaches the client in two segments: a keep-alive client wakes up for the
head, finds no body, and waits again. :class:`Response` keeps the head until
the first body piece (or the end of the answer) and sends both at once, with
one ``send`` when the socket takes it all, as it does for any answer that
fits its buffer.

The bytes are gunicorn's own: the head is what its ``send_headers`` makes
(its Date header made once a second, not at every answer), the body
framing (Content-Length or chunked, nothing for HEAD, 1xx, 204 and 304) is
decided by its ``write``; tests/test_gunicorn_worker.py compares the
two workers' bytes on the same requests. A streamed answer (``/events``)
still goes out piece by piece, as the application yields it.

:class:`Worker` is gunicorn's ``GeventWorker`` with that response; its
keep-alive loop, header timeout (a new gevent Timeout for each head: one
timer kept for a connection and stopped between heads resumes with the time
left, so it cut a busy keep-alive connection off) and connection limit are gunicorn's
(cli/gunicorn_config.py says why gevent). gunicorn's master imports this
module (``worker_class``), as it imports its own gevent worker: before the
worker process patches the standard library, so it imports no more than
gunicorn's does.

Its settings are gunicorn's too, read through :class:`SettledConfig`: a
setting gunicorn's ``Config`` looks up in its table at every read (two
Python calls; the parser, ``wsgi.create`` and the response read about
twenty a request) is, once read, a plain attribute of the worker's copy.
A worker's settings never change: a reload starts new workers.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

import gevent
from gunicorn import util
from gunicorn.config import Config, PostRequest, PreRequest
from gunicorn.http import wsgi
from gunicorn.workers.ggevent import GeventWorker


class SettledConfig(Config):
    """gunicorn's Config whose settings, once read, are plain attributes."""

    def __getattr__(self, name: str) -> Any:
        value = super().__getattr__(name)
        self.__dict__[name] = value  # past Config.__setattr__, which refuses settings
        return value

    @classmethod
    def of(cls, cfg: Config) -> Config:
        """A copy of ``cfg`` (gunicorn's own class only) that keeps what it reads."""
        if type(cfg) is not Config:
            return cfg
        settled = cls.__new__(cls)
        settled.__dict__.update(vars(cfg))
        return settled


#: The second of time.time() the Date header was last made for, and that header's value.
_date: tuple[int, str] = (-1, "")


def http_date() -> str:
    """gunicorn's ``util.http_date()``, made once for each second it names."""
    global _date
    second = int(time.time())
    if _date[0] != second:
        _date = (second, util.http_date(second))
    return _date[1]


class Response(wsgi.Response):
    """gunicorn's HTTP/1 response; its head waits for the first body bytes."""

    headers_sent: bool  # gunicorn's own attributes, for mypy
    chunked: bool
    upgrade: bool
    status: str
    version: str
    headers: list[tuple[str, str]]

    def __init__(self, req: Any, sock: Any, cfg: Any) -> None:
        super().__init__(req, sock, cfg)
        #: The head, made but not sent yet: only ever within write, close or sendfile.
        self.unsent_head = b""

    def send_headers(self) -> None:
        if self.headers_sent:
            return
        # gunicorn's Response.send_headers and default_headers, kept for the next
        # send instead of sent, with the Date made once a second.
        if self.upgrade:
            connection = "upgrade"
        elif self.should_close():
            connection = "close"
        else:
            connection = "keep-alive"
        major, minor = self.req.version
        head = [
            f"HTTP/{major}.{minor} {self.status}\r\nServer: {self.version}\r\n"
            f"Date: {http_date()}\r\nConnection: {connection}\r\n"
        ]
        if self.chunked:
            head.append("Transfer-Encoding: chunked\r\n")
        head.extend([f"{k}: {v}\r\n" for k, v in self.headers])
        head.append("\r\n")
        self.unsent_head = "".join(head).encode("latin-1")  # util.to_bytestring's
        self.headers_sent = True

    def write(self, arg: bytes) -> None:
        super().write(arg)
        self.send(b"")  # the head alone, when no body bytes went (HEAD, 204, 304, b"")

    def _emit_body(self, data: bytes) -> None:
        # util.write's framing, and the head in front of it.
        self.send(b"%X\r\n%s\r\n" % (len(data), data) if self.chunked else data)

    def close(self) -> None:
        self.send_headers()
        self.send(b"0\r\n\r\n" if self.chunked else b"")  # util.write_chunk(sock, b"")

    def sendfile(self, respiter: Any) -> bool:
        # gunicorn's sendfile writes to the socket itself, after send_headers.
        self.send_headers()
        self.send(b"")
        return bool(super().sendfile(respiter))

    def send(self, data: bytes) -> None:
        """The unsent head and ``data``: one ``send`` when the socket takes all of it."""
        data, self.unsent_head = self.unsent_head + data, b""
        if data:
            sent = self.sock.send(data)
            if sent < len(data):
                self.sock.sendall(memoryview(data)[sent:])


class Worker(GeventWorker):
    """gunicorn's gevent worker with :class:`Response` and :class:`SettledConfig`."""

    alive: bool  # gunicorn's own attributes, for mypy
    nr: int
    cfg: Config
    log: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # In the master, before the fork: a copy, so the master's own stays as it was.
        self.cfg = SettledConfig.of(self.cfg)
        # The request hooks worth a call: gunicorn's own pre_request only writes a
        # debug line (service/requestlog.py writes every request's), its own
        # post_request does nothing.
        pre, post = self.cfg.pre_request, self.cfg.post_request
        debug = self.log.error_log.isEnabledFor(logging.DEBUG)
        self.pre_request = None if pre is PreRequest.default and not debug else pre
        self.post_request = None if post is PostRequest.default else post

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> None:
        """gunicorn's GeventWorker.handle_request (AsyncWorker's, HTTP/1) with
        :class:`Response`, less its access-log clock: service/requestlog.py logs
        every request, and cli/gunicorn_config.py's logger drops gunicorn's line."""
        environ: dict[str, Any] = {}
        resp: Response | None = None
        try:
            if self.pre_request is not None:
                self.pre_request(self, req)
            resp, environ = wsgi.create(
                req, sock, addr, listener_name, self.cfg, response_class=Response
            )
            environ["wsgi.multithread"] = True
            self.nr += 1
            if self.nr >= self.max_requests and self.alive:
                self.log.info("Autorestarting worker after current request.")
                self.alive = False
            if not self.alive or not self.cfg.keepalive:
                resp.force_close()

            respiter = self.wsgi(environ, resp.start_response)
            if self.is_already_handled(respiter):
                return
            try:
                if isinstance(respiter, environ["wsgi.file_wrapper"]):
                    resp.write_file(respiter)
                else:
                    for item in respiter:
                        resp.write(item)
                resp.close()
            finally:
                if hasattr(respiter, "close"):
                    respiter.close()
            if resp.should_close():
                raise StopIteration()
        except (StopIteration, OSError):
            raise  # AsyncWorker.handle, the keep-alive loop, decides what these mean
        except (Exception, SystemExit) as error:
            if resp is not None and resp.headers_sent:
                # A timeout's abort is SystemExit. A 500 after a head would corrupt it.
                self.log.exception("Error handling request")
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                    sock.close()
                except OSError:
                    pass
                raise StopIteration() from None
            if not isinstance(error, SystemExit):
                raise
        except gevent.GreenletExit:
            pass
        finally:
            if self.post_request is not None:
                try:
                    self.post_request(self, req, environ, resp)
                except Exception:
                    self.log.exception("Exception in post_request hook")


__all__ = ["Response", "SettledConfig", "Worker"]
