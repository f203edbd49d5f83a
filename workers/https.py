"""One bounded HTTP(S) exchange with a vetted address: what a webhook
delivery and an MTA-STS policy fetch both need.

The host is resolved here and every address judged by the same table as a
mail server's (:func:`smtpcheck.targetpolicy.forbidden_reason`); the socket
is opened to the vetted address itself (no second lookup, so DNS rebinding
gains nothing), then TLS with SNI and verification against the system store
plus ``SMTPCHECK_CA_FILE``, then ``http.client`` over that socket. Redirects
are never followed (the caller sees the 3xx); at most ``max_bytes`` of the
answer are read, and one deadline covers the whole exchange however slowly
the other side trickles.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import socket
import ssl
import threading
import time
from dataclasses import dataclass

from smtpcheck.config import Settings
from smtpcheck.targetpolicy import HTTPTarget, IPAddress, forbidden_reason
from workers.resolver import Resolver

CONNECT_TIMEOUT = 5.0


class Refused(Exception):
    """The policy refuses every address of this host: nothing was dialled."""


@dataclass(frozen=True)
class Response:
    status: int
    address: IPAddress
    body: bytes
    truncated: bool  # the answer was longer than ``max_bytes``
    content_type: str | None
    location: str | None


def exchange(
    target: HTTPTarget,
    settings: Settings,
    deadline: float,
    *,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    max_bytes: int = 64 * 1024,
) -> Response:
    """Resolve, vet, connect to the vetted address, send, read at most ``max_bytes``.

    Raises :class:`Refused`, :class:`workers.errors.DNSError`,
    ``ssl.SSLError`` (a certificate that does not verify among them),
    ``TimeoutError``, ``OSError`` or ``http.client.HTTPException``.
    """
    addresses = vetted_addresses(target, settings, deadline)
    sock: socket.socket | None = None
    errors = []
    address = addresses[0]
    for address in addresses:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        try:
            sock = socket.create_connection(
                (str(address), target.port), timeout=min(CONNECT_TIMEOUT, left)
            )
            break
        except OSError as exc:
            errors.append(f"{address}: {exc.strerror or exc}")
    if sock is None:
        raise ConnectionError("; ".join(errors))
    cut = threading.Event()
    watchdog = threading.Timer(max(deadline - time.monotonic(), 0.0), _cut, args=(sock, cut))
    watchdog.daemon = True
    watchdog.start()
    try:
        sock.settimeout(max(deadline - time.monotonic(), 0.1))
        connection: http.client.HTTPConnection
        if target.scheme == "https":
            sock = tls_context(settings.ca_file).wrap_socket(sock, server_hostname=target.host)
            connection = http.client.HTTPSConnection(target.host, target.port)
        else:
            connection = http.client.HTTPConnection(target.host, target.port)
        connection.sock = sock  # dial nothing else: http.client speaks over this socket
        connection.request(method, target.target, body=body, headers=headers or {})
        response = connection.getresponse()
        data = response.read(max_bytes + 1)
        return Response(
            status=response.status,
            address=address,
            body=data[:max_bytes],
            truncated=len(data) > max_bytes,
            content_type=response.getheader("Content-Type"),
            location=response.getheader("Location"),
        )
    except (OSError, http.client.HTTPException):
        if cut.is_set() or time.monotonic() >= deadline:
            raise TimeoutError from None  # whatever half a reply the cut left behind
        raise
    finally:
        watchdog.cancel()
        sock.close()


def _cut(sock: socket.socket, cut: threading.Event) -> None:
    cut.set()
    with contextlib.suppress(OSError):  # closed meanwhile
        sock.shutdown(socket.SHUT_RDWR)


def vetted_addresses(target: HTTPTarget, settings: Settings, deadline: float) -> list[IPAddress]:
    """The host's addresses that the target policy lets through; Refused if none."""
    addresses = Resolver(settings, deadline).addresses(target.host, None)
    allowed = []
    refused = []
    for address in addresses:
        reason = forbidden_reason(address, settings.allow_networks)
        if reason is None:
            allowed.append(address)
        else:
            refused.append(f"{address} is a {reason} address")
    if not allowed:
        raise Refused("; ".join(refused) + " (SMTPCHECK_ALLOW_NETWORKS can let a network through)")
    return allowed


@functools.lru_cache(maxsize=4)
def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """Verify the server as SMTP TLS verification does: system store plus SMTPCHECK_CA_FILE."""
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context
