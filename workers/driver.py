"""The glue between a Dialogue (no I/O) and a Connection (the socket): it
carries out each action the dialogue asks for and hands back what came,
the way httpcore's connection drives h11. The check and every probe use it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from workers.connection import Connection
from workers.dialogue import (
    Close,
    Dialogue,
    Handshake,
    Note,
    ReadGreeting,
    Send,
    SendMessage,
    SendRaw,
)
from workers.errors import CheckAborted

QUIT_TIMEOUT = 5.0  # a server that does not answer QUIT does not hold the check

#: Starts TLS on the connection for a mode ("implicit" or "starttls") and
#: returns the session's facts (version, cipher, certificate, verified).
Handshaker = Callable[[str], dict[str, Any]]


def pump(
    dialogue: Dialogue,
    conn: Connection,
    handshake: Handshaker,
    timings: dict[str, float] | None = None,
) -> None:
    """Run ``dialogue`` over ``conn`` until it says Close."""
    while True:
        action = dialogue.next_action()
        if isinstance(action, Close):
            return
        if isinstance(action, Note):
            conn.transcript.note(action.text)
            continue
        started = time.monotonic()
        failed_before = dialogue.failure is not None
        try:
            if isinstance(action, ReadGreeting):
                dialogue.receive_reply(conn.read_reply())
            elif isinstance(action, Send):
                if action.timing == "quit":
                    conn.command_timeout = min(conn.command_timeout, QUIT_TIMEOUT)
                conn.send_line(action.line, action.shown)
                dialogue.receive_reply(conn.read_reply())
            elif isinstance(action, SendMessage):
                dialogue.receive_reply(conn.send_message(action.payload))
            elif isinstance(action, SendRaw):
                conn.send_raw(action.payload, action.shown)
                reply = conn.read_reply_within(action.wait)
                if reply is None:
                    dialogue.no_reply()
                else:
                    dialogue.receive_reply(reply)
            elif isinstance(action, Handshake):
                dialogue.tls_established(handshake(action.mode))
        except CheckAborted as exc:
            dialogue.abort(exc, total_expired=conn.total_expired)
            failure = dialogue.failure
            if failure is not None and not failed_before:
                conn.transcript.error(f"{failure.outcome}: {failure.detail}")
        finally:
            if timings is not None and action.timing != "quit":
                elapsed = round((time.monotonic() - started) * 1000, 1)
                timings[action.timing] = round(timings.get(action.timing, 0) + elapsed, 1)
