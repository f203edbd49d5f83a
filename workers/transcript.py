"""The record of a check: every line that crossed the wire, with its time.

Recorded once, by the driver, where bytes cross the wire, with elapsed
milliseconds on a monotonic clock. Secrets are redacted by the caller before
a line is recorded; nothing here ever sees them.

A listener (``listening(callback)`` around a check) hears every entry as it
is recorded, already redacted: the worker publishes them for
``GET /v1/checks/{id}/events`` (workers/events.py), the CLI prints them.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

Listener = Callable[[dict[str, Any]], None]

_listener: ContextVar[Listener | None] = ContextVar("transcript_listener", default=None)

NOTE = "note"
SERVER = "server"
CLIENT = "client"
ERROR = "error"

_json = json.JSONEncoder(ensure_ascii=False).encode

MAX_ENTRIES = 5000  # a hostile server cannot grow a transcript without bound
MAX_TEXT = 1000  # characters kept of one entry


@contextlib.contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Every Transcript made inside this block (in this thread) calls ``listener``."""
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)


def entry_json(entry: dict[str, Any]) -> str:
    """An entry as ``json.JSONEncoder(ensure_ascii=False).encode`` writes it,
    byte for byte, at a third of its cost: the encoder sets up its machinery
    anew on every call, and a listener that publishes lines (the worker's)
    encodes every entry. Only its two strings need JSON's escaping."""
    tls = ', "tls": true' if entry.get("tls") else ""
    return (
        f'{{"t_ms": {entry["t_ms"]!r}, "dir": {_json(entry["dir"])}, '
        f'"text": {_json(entry["text"])}{tls}}}'
    )


@dataclass
class Transcript:
    started: float = field(default_factory=time.monotonic)
    entries: list[dict[str, Any]] = field(default_factory=list)
    dropped: int = 0
    listener: Listener | None = field(default_factory=_listener.get, repr=False)

    def elapsed_ms(self) -> float:
        return round((time.monotonic() - self.started) * 1000, 1)

    def record(self, direction: str, text: str, *, tls: bool = False) -> None:
        if len(self.entries) >= MAX_ENTRIES:
            self.dropped += 1
            return
        if len(text) > MAX_TEXT:
            text = f"{text[:MAX_TEXT]}... ({len(text) - MAX_TEXT} more characters)"
        elapsed = round((time.monotonic() - self.started) * 1000, 1)  # elapsed_ms(), inline
        entry: dict[str, Any] = {"t_ms": elapsed, "dir": direction, "text": text}
        if tls:
            entry["tls"] = True
        self.entries.append(entry)
        if self.listener is not None:
            self.listener(entry)

    def note(self, text: str) -> None:
        self.record(NOTE, text)

    def error(self, text: str) -> None:
        self.record(ERROR, text)

    def as_list(self) -> list[dict[str, Any]]:
        if self.dropped:
            return [
                *self.entries,
                {
                    "t_ms": self.elapsed_ms(),
                    "dir": NOTE,
                    "text": f"transcript truncated: {self.dropped} more lines not kept",
                },
            ]
        return list(self.entries)
