"""A TCP proxy on loopback in front of a real server that can freeze: stop
forwarding in both directions without closing anything (a frozen primary, a
partition without RST, a paused container), then thaw and forward what
waited, in order, as TCP delivers it once the path is back."""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from types import TracebackType


class FreezingProxy:
    """Forwards 127.0.0.1:<port> to ``upstream``; :meth:`freeze` and :meth:`thaw`."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port = int(self._listener.getsockname()[1])
        self._thawed = threading.Event()
        self._thawed.set()
        self._stopping = threading.Event()
        self._peers: dict[socket.socket, socket.socket] = {}
        self._thread = threading.Thread(target=self._run, name="freezing-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def freeze(self) -> None:
        """Stop forwarding: connections stay open, new ones are accepted by the
        kernel (its backlog) and wait, nothing is answered."""
        self._thawed.clear()

    def thaw(self) -> None:
        """Forward again, what waited first."""
        self._thawed.set()

    def __enter__(self) -> FreezingProxy:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stopping.set()
        self._thawed.set()
        self._thread.join(5)
        for sock in [self._listener, *self._peers]:
            with contextlib.suppress(OSError):
                sock.close()

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._listener, selectors.EVENT_READ)
        while not self._stopping.is_set():
            if not self._thawed.is_set():
                time.sleep(0.01)  # frozen: read nothing, write nothing, close nothing
                continue
            for key, _ in selector.select(0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._listener:
                    self._accept(selector)
                elif sock in self._peers:
                    self._forward(selector, sock)
        selector.close()

    def _accept(self, selector: selectors.BaseSelector) -> None:
        with contextlib.suppress(BlockingIOError):
            while True:
                client, _ = self._listener.accept()
                server = socket.create_connection(self.upstream)
                for one, other in ((client, server), (server, client)):
                    one.setblocking(True)
                    self._peers[one] = other
                    selector.register(one, selectors.EVENT_READ)

    def _forward(self, selector: selectors.BaseSelector, sock: socket.socket) -> None:
        other = self._peers[sock]
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if data:
            with contextlib.suppress(OSError):
                other.sendall(data)
            return
        # One side closed: pass the close on once what it sent is forwarded.
        for one in (sock, other):
            with contextlib.suppress(KeyError, ValueError):
                selector.unregister(one)
            self._peers.pop(one, None)
            with contextlib.suppress(OSError):
                one.close()
