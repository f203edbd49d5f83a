"""Network namespaces a test makes for itself, and tears down.

Three namespaces and two veth pairs, nothing in the machine's own namespace::

    vantage A (198.18.1.2) --veth-- hub (198.18.1.1, 198.18.2.1) --veth-- vantage B (198.18.2.2)
                                     lo: 198.18.0.1 services, 198.18.0.25 the target

The hub holds Redis, the API, the DNS server and the SMTP target on
addresses of its own loopback, which both vantages reach over their veth.
198.18.0.0/15 is the range set aside for testing network equipment; no
namespace here has a route out, so no packet can leave the three.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

SERVICES = "198.18.0.1"
TARGET = "198.18.0.25"
CLONE_NEWNET = 0x40000000


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN and CAP_SYS_ADMIN)"
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            return f"no `{tool}` on this machine (.ci/run installs {package})"
    probe = f"scprobe{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot make a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class Namespaces:
    """The hub and two vantages; ``in_namespace`` runs a command inside one."""

    def __init__(self) -> None:
        token = uuid.uuid4().hex[:6]
        self.hub = f"sc{token}hub"
        self.vantages = {"a": f"sc{token}a", "b": f"sc{token}b"}
        self.made: list[str] = []
        self._hub_thread: ThreadPoolExecutor | None = None

    def source(self, vantage: str) -> str:
        """The address a vantage's connections come from."""
        return f"198.18.{1 if vantage == 'a' else 2}.2"

    def create(self) -> Namespaces:
        try:
            for name in (self.hub, *self.vantages.values()):
                _ip("netns", "add", name)
                self.made.append(name)
                _ip("-n", name, "link", "set", "lo", "up")
            _ip("-n", self.hub, "addr", "add", f"{SERVICES}/32", "dev", "lo")
            _ip("-n", self.hub, "addr", "add", f"{TARGET}/32", "dev", "lo")
            for index, (key, name) in enumerate(self.vantages.items(), start=1):
                hub_end, far_end = f"h{key}", "eth0"
                _ip(
                    "link", "add", hub_end, "netns", self.hub, "type", "veth",
                    "peer", "name", far_end, "netns", name,
                )  # fmt: skip
                _ip("-n", self.hub, "addr", "add", f"198.18.{index}.1/24", "dev", hub_end)
                _ip("-n", self.hub, "link", "set", hub_end, "up")
                _ip("-n", name, "addr", "add", f"{self.source(key)}/24", "dev", far_end)
                _ip("-n", name, "link", "set", far_end, "up")
                _ip("-n", name, "route", "add", "198.18.0.0/24", "via", f"198.18.{index}.1")
        except BaseException:
            self.delete()
            raise
        return self

    def drop_port(self, vantage: str, port: int) -> None:
        """Silently drop every TCP packet vantage ``vantage`` sends to ``port``."""
        rules = (
            "table inet blocked {\n"
            "  chain out {\n"
            "    type filter hook output priority 0; policy accept;\n"
            f"    tcp dport {port} drop\n"
            "  }\n"
            "}\n"
        )
        subprocess.run(
            ["ip", "netns", "exec", self.vantages[vantage], "nft", "-f", "-"],
            input=rules,
            check=True,
            capture_output=True,
            text=True,
        )

    def argv(self, namespace: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", namespace, *argv]

    def in_hub(self, call: Callable[[], T]) -> T:
        """Run ``call`` on a thread of this process that lives in the hub namespace.

        A network namespace belongs to a thread: sockets opened there stay in
        the hub, and the rest of the test process is not moved.
        """
        if self._hub_thread is None:
            self._hub_thread = ThreadPoolExecutor(1, initializer=self._enter, initargs=(self.hub,))
        return self._hub_thread.submit(call).result()

    @staticmethod
    def _enter(namespace: str) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {namespace}")
        finally:
            os.close(fd)

    def delete(self) -> None:
        """Remove every namespace made (their veths go with them)."""
        if self._hub_thread is not None:
            self._hub_thread.shutdown()
            self._hub_thread = None
        for name in reversed(self.made):
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("netns", "del", name)
        self.made.clear()

    def __enter__(self) -> Namespaces:
        return self.create()

    def __exit__(self, *exc: Any) -> None:
        self.delete()
