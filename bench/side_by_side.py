"""Two trees' services up at once, one check through each in turn: which is faster, now.

The host this project is measured on changes speed by up to 2x within
minutes, so two runs of bench/worker.py minutes apart compare the minutes as
much as the trees. Here both trees' services run at the same time, each its
own embedded redis-server, ``smtpcheck api`` and ``smtpcheck worker``
(started from that tree with its own ``.venv``), against one lean SMTP and
DNS target; then one check goes through the first, one through the second,
and so on (the order reversed every other time), each a POST and a
``GET ?wait`` on its own keep-alive raw-socket connection. Every pair of
checks meets the same moment's host. It prints each tree's median time
through the service and the median of the differences of the pairs.

    .venv/bin/python -m bench.side_by_side TREE_A TREE_B [--checks N] [--processes P]

A tree is a checkout with ``make install`` done (``git worktree add`` makes
one of an old revision). Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.service import (  # noqa: E402
    API_KEYS,
    QUEUE,
    RawApi,
    bench_env,
    check_request,
    http_status,
    post_request,
    process,
    smtp_target,
    wait_for,
)
from bench.worker import tarpit  # noqa: E402
from smtpcheck.embedded_redis import EmbeddedRedis, free_port  # noqa: E402
from smtpcheck.redis_client import connect  # noqa: E402

WARM_UP = 100  # checks through each service before the counted ones


class Through:
    """One tree's service, and a check through it."""

    def __init__(self, port: int, target_port: int) -> None:
        key = API_KEYS[0].partition(":")[2]
        self.client = RawApi(port, key)
        self.post = post_request(port, key, check_request(target_port))

    def check(self) -> float:
        """Milliseconds from the POST to the answer of its GET ?wait."""
        start = time.perf_counter()
        status, payload = self.client.send(self.post)
        assert status == 202, payload
        check_id = json.loads(payload)["id"]
        status, payload = self.client.get(f"/v1/checks/{check_id}?wait=30")
        elapsed = (time.perf_counter() - start) * 1000
        body = json.loads(payload)
        assert status == 200 and body["status"] == "finished", payload[:300]
        assert body["result"]["ok"], body["result"]["summary"]
        return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs=2, type=Path, help="two checkouts, each with its .venv")
    parser.add_argument("--checks", type=int, default=600, help="counted checks per tree")
    parser.add_argument("--processes", type=int, default=2, help="smtpcheck worker --processes")
    args = parser.parse_args()
    trees = [tree.resolve() for tree in args.trees]
    for tree in trees:
        if not (tree / ".venv/bin/python").exists():
            parser.error(f"{tree} has no .venv (make install there)")
    with (
        tempfile.TemporaryDirectory(prefix="smtpcheck-side-") as tmp_name,
        smtp_target("lean") as (target_port, dns_port, _),
        tarpit() as tarpit_port,
        contextlib.ExitStack() as stack,
    ):
        tmp = Path(tmp_name)
        ports = []
        for number, tree in enumerate(trees):
            server = EmbeddedRedis(tmp / f"redis-{number}", persist=False).start()
            stack.callback(server.stop)
            conn = connect(server.url)
            stack.callback(conn.close)
            env = bench_env(server.url, [target_port, tarpit_port], dns_port)
            python = str(tree / ".venv/bin/python")
            port = free_port()
            api = [python, "-m", "cli", "api", "--bind", f"127.0.0.1:{port}"]
            worker = [python, "-m", "cli", "worker", "--processes", str(args.processes)]
            stack.enter_context(process(api, env, tmp / f"api-{number}.log", tree))
            stack.enter_context(process(worker, env, tmp / f"worker-{number}.log", tree))
            wait_for(lambda port=port: http_status(port, "/readyz") == 200, 60, "the API")
            wait_for(
                lambda conn=conn: int(conn.scard(f"rq:workers:{QUEUE}")) >= args.processes,
                60,
                "the workers",
            )
            ports.append(port)
        # Connected once both are up: an idle keep-alive connection closes after 5 s.
        services = [Through(port, target_port) for port in ports]
        for _ in range(WARM_UP):
            for service in services:
                service.check()
        times: list[list[float]] = [[], []]
        for turn in range(args.checks):
            for index in (0, 1) if turn % 2 == 0 else (1, 0):
                times[index].append(services[index].check())
        for service in services:
            service.client.close()
    print(
        f"{args.checks} checks through each, --processes {args.processes}, turn by turn; "
        f"load average at the end {os.getloadavg()[0]:.2f}"
    )
    print()
    print("| tree | median ms | 25th percentile | 75th percentile |")
    print("| --- | ---: | ---: | ---: |")
    for tree, measured in zip(trees, times, strict=True):
        quartiles = statistics.quantiles(measured, n=4)
        print(
            f"| {tree} | {statistics.median(measured):.2f} | {quartiles[0]:.2f} "
            f"| {quartiles[2]:.2f} |"
        )
    differences = [a - b for a, b in zip(times[0], times[1], strict=True)]
    print()
    print(
        f"median of the pairs' differences, first less second: "
        f"{statistics.median(differences):+.2f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
