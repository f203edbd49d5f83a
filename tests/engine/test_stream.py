"""Stream on a plain socket (non-blocking, waiting only when it must): the
same bytes and the same errors as a socket with a timeout per call."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from workers.errors import ConnectionClosed, ReadTimeout
from workers.stream import Stream


@pytest.fixture
def pair() -> Iterator[tuple[Stream, socket.socket]]:
    """A Stream connected to a server-side socket the test drives."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    stream = Stream.connect(ipaddress.ip_address("127.0.0.1"), port, time.monotonic() + 5)
    peer, _ = listener.accept()
    listener.close()
    yield stream, peer
    stream.close()
    peer.close()


def test_a_read_waits_for_bytes_that_come_later(pair):
    stream, peer = pair
    sender = threading.Timer(0.1, lambda: peer.sendall(b"220 hello\r\n"))
    sender.start()
    assert stream.read(time.monotonic() + 5) == b"220 hello\r\n"
    sender.join()


def test_a_read_with_nothing_coming_times_out_as_before(pair):
    stream, _ = pair
    started = time.monotonic()
    with pytest.raises(ReadTimeout, match=r"^read timed out$"):
        stream.read(started + 0.2)
    assert 0.15 < time.monotonic() - started < 2
    with pytest.raises(ReadTimeout, match=r"^deadline passed$"):
        stream.read(time.monotonic() - 1)


def test_a_closed_peer_reads_as_empty(pair):
    stream, peer = pair
    peer.close()
    assert stream.read(time.monotonic() + 2) == b""


def test_a_write_larger_than_the_buffers_goes_out_whole(pair):
    stream, peer = pair
    payload = bytes(range(256)) * 40_000  # 10 MB: many rounds of a full send buffer
    received = bytearray()

    def drain() -> None:
        while len(received) < len(payload):
            chunk = peer.recv(1 << 16)
            if not chunk:
                return
            received.extend(chunk)
            time.sleep(0.0005)  # a slow reader

    reader = threading.Thread(target=drain)
    reader.start()
    stream.write(payload, time.monotonic() + 30)
    reader.join(30)
    assert bytes(received) == payload


def test_a_write_nobody_reads_times_out_as_before(pair):
    stream, _ = pair
    with pytest.raises(ReadTimeout, match=r"^write timed out$"):
        stream.write(b"x" * 50_000_000, time.monotonic() + 0.3)


def test_a_write_to_a_reset_connection_is_connection_closed(pair):
    stream, peer = pair
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    peer.close()  # RST
    time.sleep(0.05)
    with pytest.raises(ConnectionClosed):
        for _ in range(100):
            stream.write(b"x" * 1000, time.monotonic() + 2)
