"""Exceptions of the check engine, each meaning "cannot continue".

A server saying no is a result, not an exception; these are the cases where
the dialogue cannot go on. Each class maps to exactly one outcome code, so
the code that runs a check never has to guess. Peer faults and caller faults
are different classes, as in h11: ``RemoteProtocolError`` is the server's
doing, ``LocalProtocolError`` is ours (or our caller's).
"""

from __future__ import annotations


class CheckAborted(Exception):
    """Base of every engine exception that ends a check early."""

    outcome = "protocol_error"
    #: A failed connect: the worker's own address on that path, if it had one.
    source: str | None = None


class LocalProtocolError(CheckAborted, ValueError):
    """We were asked to send something SMTP cannot carry (CR, LF or NUL in a
    command, an over-long line, a move the state table does not allow)."""

    outcome = "protocol_error"


class RemoteProtocolError(CheckAborted):
    """The server sent something that is not an SMTP reply, or too much of it."""

    outcome = "protocol_error"


class DNSError(CheckAborted):
    """The host or its MX does not resolve. ``temporary`` when the answer was
    SERVFAIL or a timeout: the name may well resolve a minute later."""

    outcome = "dns_error"

    def __init__(self, message: str = "", *, temporary: bool = False) -> None:
        super().__init__(message)
        self.temporary = temporary


class TargetForbidden(CheckAborted):
    outcome = "target_forbidden"


class ConnectRefused(CheckAborted):
    outcome = "connect_refused"


class ConnectTimeout(CheckAborted):
    outcome = "connect_timeout"


class NetworkUnreachable(CheckAborted):
    outcome = "network_unreachable"


class ReadTimeout(CheckAborted):
    """No complete reply before the command deadline or the check's deadline."""

    outcome = "timeout"
    total = False  # True when the whole check's deadline is what passed


class ConnectionClosed(CheckAborted):
    outcome = "connection_closed"


class TLSError(CheckAborted):
    outcome = "tls_error"


class Canceled(CheckAborted):
    """The caller canceled the check: the engine stops at its next read and
    says QUIT where it can."""

    outcome = "canceled"
