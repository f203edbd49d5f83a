"""Helm's Go SDK (helm-python-sdk), run in a child process for the tests.

helm-python-sdk loads a Go shared library into the Python process that
imports it: the Go runtime starts its own threads and signal handlers there.
The test suite forks and signals its own processes, so the library is kept
out of the pytest process: :class:`HelmSDK` starts ``python -m
tests.deploy.helm_sdk`` once, sends it one JSON request per line on stdin
and reads one JSON reply per line from its stdout.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import IO, Any


class HelmFailure(Exception):
    """Helm refused (a template failed, values broke the schema, ...)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


class HelmSDK:
    """A child process answering ``render`` and ``lint`` requests for one chart."""

    def __init__(self, chart: Path, cwd: Path) -> None:
        self.chart = chart
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.deploy.helm_sdk"],
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def _call(self, request: dict[str, Any]) -> Any:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps({"chart": str(self.chart), **request}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the helm SDK process exited ({self.process.wait(5)})")
        reply = json.loads(line)
        if "error" in reply:
            raise HelmFailure(reply["error"], reply["message"])
        return reply["ok"]

    def render(self, values: dict[str, Any], *, release: str, namespace: str) -> dict[str, str]:
        """Template path -> rendered text, as ``helm template`` would make them."""
        rendered: dict[str, str] = self._call(
            {"op": "render", "values": values, "release": release, "namespace": namespace}
        )
        return rendered

    def lint(self, values: dict[str, Any], *, namespace: str, kube_version: str) -> dict[str, Any]:
        """``helm lint --strict``: {"messages": [{"severity", "path", "error"}], "errors"}."""
        report: dict[str, Any] = self._call(
            {"op": "lint", "values": values, "namespace": namespace, "kube_version": kube_version}
        )
        return report

    def close(self) -> None:
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, 9)
            self.process.wait(5)
        if self.process.stdout is not None:
            self.process.stdout.close()


# --- the child ----------------------------------------------------------------


def _handle(helm: Any, request: dict[str, Any]) -> Any:
    if request["op"] == "render":
        with helm.Chart.load(request["chart"]) as chart:
            return chart.render(
                request["values"],
                name=request["release"],
                namespace=request["namespace"],
                is_install=True,
            )
    if request["op"] == "lint":
        return helm.lint(
            request["chart"],
            request["values"],
            strict=True,
            namespace=request["namespace"],
            kube_version=request["kube_version"],
        )
    raise ValueError(f"unknown op {request['op']!r}")


def serve(requests: IO[str], replies: IO[str]) -> None:
    import helm_python as helm

    for line in requests:
        try:
            reply: dict[str, Any] = {"ok": _handle(helm, json.loads(line))}
        except helm.HelmError as exc:
            reply = {"error": type(exc).__name__, "message": str(exc)}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


if __name__ == "__main__":
    # Replies go to a private copy of stdout; anything the Go library prints
    # lands on stderr and cannot garble them.
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    serve(sys.stdin, replies)
