"""The record of a check: every line that crossed the wire, with its time.

Recorded once, by the driver, where bytes cross the wire, with elapsed
milliseconds on a monotonic clock. Secrets are redacted by the caller before
a line is recorded; nothing here ever sees them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

NOTE = "note"
SERVER = "server"
CLIENT = "client"
ERROR = "error"

MAX_ENTRIES = 5000  # a hostile server cannot grow a transcript without bound
MAX_TEXT = 1000  # characters kept of one entry


@dataclass
class Transcript:
    started: float = field(default_factory=time.monotonic)
    entries: list[dict[str, Any]] = field(default_factory=list)
    dropped: int = 0

    def elapsed_ms(self) -> float:
        return round((time.monotonic() - self.started) * 1000, 1)

    def record(self, direction: str, text: str, *, tls: bool = False) -> None:
        if len(self.entries) >= MAX_ENTRIES:
            self.dropped += 1
            return
        if len(text) > MAX_TEXT:
            text = f"{text[:MAX_TEXT]}... ({len(text) - MAX_TEXT} more characters)"
        entry: dict[str, Any] = {"t_ms": self.elapsed_ms(), "dir": direction, "text": text}
        if tls:
            entry["tls"] = True
        self.entries.append(entry)

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
