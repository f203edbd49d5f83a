"""What the ``smtpcheck`` command writes to a person's terminal.

Colours only on a terminal (stdout a tty, ``NO_COLOR`` unset, ``TERM`` not
``dumb``): the swaks markers keep the meaning, colour only helps the eye.
While nothing arrives, a spinner with the elapsed time turns on stderr (a
tty only); a transcript line first clears it, so the two never mix.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from typing import IO, Any

from smtpcheck.report import transcript_lines

RESET = "\033[0m"
STYLE = {
    "server": "\033[36m",  # cyan: what the server said
    "client": "\033[33m",  # yellow: what we sent
    "note": "\033[2m",  # dim: the checker's notes
    "error": "\033[1;31m",  # bold red
    "pass": "\033[1;32m",
    "fail": "\033[1;31m",
}
SPIN = "|/-\\"


def wants_colour(stream: IO[str], environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    if "NO_COLOR" in env or env.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class Terminal:
    """stdout for the transcript and verdict, stderr for progress."""

    def __init__(self, out: IO[str] | None = None, err: IO[str] | None = None) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.colour = wants_colour(self.out)
        self.spinning = wants_colour(self.err) or bool(getattr(self.err, "isatty", bool)())
        self._lock = threading.Lock()
        self._status = ""
        self._since = time.monotonic()
        self._shown = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- output ------------------------------------------------------------

    def paint(self, text: str, style: str) -> str:
        return f"{STYLE[style]}{text}{RESET}" if self.colour and style in STYLE else text

    def line(self, entry: Mapping[str, Any]) -> None:
        """One transcript entry, as ``render_text`` lays it out."""
        style = str(entry.get("dir"))
        self.write("".join(self.paint(text, style) + "\n" for text in transcript_lines([entry])))

    def verdict(self, lines: list[str]) -> None:
        painted = []
        for text in lines:
            if text.startswith("PASS"):
                text = self.paint("PASS", "pass") + text[4:]
            elif text.startswith("FAIL"):
                text = self.paint("FAIL", "fail") + text[4:]
            painted.append(text + "\n")
        self.write("".join(painted))

    def write(self, text: str) -> None:
        with self._lock:
            self._clear()
            self.out.write(text)
            self.out.flush()
            self._since = time.monotonic()

    def say(self, text: str) -> None:
        """A line for the person (stderr), never mixed into the transcript."""
        with self._lock:
            self._clear()
            self.err.write(text + "\n")
            self.err.flush()

    # -- progress ------------------------------------------------------------

    def status(self, text: str) -> None:
        with self._lock:
            self._status = text

    @contextlib.contextmanager
    def spinner(self) -> Iterator[None]:
        """Show the status and the time since the last line while waiting."""
        if not self.spinning:
            yield
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()
        try:
            yield
        finally:
            self._stop.set()
            self._thread.join(1)
            with self._lock:
                self._clear()

    def _spin(self) -> None:
        for frame in itertools.cycle(SPIN):
            if self._stop.wait(0.1):
                return
            with self._lock:
                waited = time.monotonic() - self._since
                if waited < 0.5:
                    continue
                self.err.write(f"\r\033[K{frame} {self._status} {waited:.1f}s")
                self.err.flush()
                self._shown = True

    def _clear(self) -> None:
        if self._shown:
            self.err.write("\r\033[K")
            self.err.flush()
            self._shown = False
