"""What one held ``GET /v1/checks/{id}?wait=30`` costs the API, counted rather than timed.

A real worker (``smtpcheck worker --processes 1``, this tree's) runs the
bench's fast check against the lean target (bench/target.py), with a fresh
embedded redis-server; one tree's API runs in a child process, in-process
through its WSGI callable with prebuilt environs (as bench/post_profile.py
does for the POST): it POSTs the check (not counted), then GETs it with
``?wait=30`` at once, as the latency pairs of bench/worker.py do. Only GETs
that were held count (the check had not ended at their first read: they sent
the XREAD). Each is split where its XREAD batch goes out:

- ``first``: the GET up to the XREAD batch (its first read and the hold's take,
  and for a running check the test for a gone worker): off the critical path,
  but it takes a core the worker and the target need;
- ``woken``: from the XREAD batch to the answer's last byte (the re-read
  parsed, the document built, its JSON, the WSGI answer): on the critical path.

For each: Python calls per GET (a profile hook), split by where the called
code lives (``ours``: the tree's service/ and smtpcheck/; ``flask``: Flask
and werkzeug; ``redis``, ``rq``, ``stdlib``, ``other``), and the GET thread's
CPU per GET (``time.thread_time``, in a pass without the hook). Beside them:
``round_trips`` (batches written to Redis per GET, each
``send_packed_command``) and ``held`` (the share of GETs that were held).

With ``--baseline REV|PATH`` that tree (a revision is checked out in a
temporary git worktree) runs the same rounds in turns with this one, against
the same worker, and the script prints new/old of each figure and the load.

    .venv/bin/python -m bench.get_profile [--gets N] [--rounds R] [--baseline REV|PATH]
        [--functions K]

``--functions K`` also prints this tree's K most called functions of ``woken``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
from pathlib import Path
from typing import Any

from bench.engine import child_figures, figures_in_turns, load, new_and_old
from bench.service import bench_env, check_request, smtp_target
from bench.worker import pool
from smtpcheck.embedded_redis import EmbeddedRedis
from smtpcheck.redis_client import connect

#: Run in a child process whose PYTHONPATH is one tree's root; prints JSON.
CHILD = """
import io, json, os, statistics, sys, time
from collections import Counter
import redis.connection
from service import create_app
from smtpcheck.config import Settings

tree, n, body, functions = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode(), int(sys.argv[4])
app = create_app(Settings.from_env())
key = os.environ["SMTPCHECK_API_KEYS"].split(",")[0].partition(":")[2]
base = {
    "SCRIPT_NAME": "", "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8025",
    "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "40000",
    "HTTP_HOST": "127.0.0.1:8025", "HTTP_AUTHORIZATION": "Bearer " + key,
    "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr,
    "wsgi.multithread": True, "wsgi.multiprocess": True, "wsgi.run_once": False,
}
posting = {
    **base, "REQUEST_METHOD": "POST", "PATH_INFO": "/v1/checks",
    "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body)),
}

def answer(environ, expect):
    got = []
    def start_response(status, headers, exc_info=None):
        assert status.startswith(expect), status
    out = app(environ, start_response)
    try:
        got = b"".join(out)
    finally:
        out.close()
    return got

def post():
    return json.loads(answer({**posting, "wsgi.input": io.BytesIO(body)}, "202"))["id"]

def get(check_id):
    environ = {
        **base, "REQUEST_METHOD": "GET", "PATH_INFO": "/v1/checks/" + check_id,
        "QUERY_STRING": "wait=30", "wsgi.input": io.BytesIO(b""),
    }
    return answer(environ, "200")

# Each batch written to Redis; at the XREAD's, the phase turns to "woken".
phase = ["first"]
sends = {"first": 0, "woken": 0}
marks = {}
send = redis.connection.AbstractConnection.send_packed_command
def marking(self, command, *args, **kwargs):
    packed = command if isinstance(command, (bytes, str)) else b"".join(command)
    if b"XREAD" in (packed if isinstance(packed, bytes) else packed.encode()):
        phase[0] = "woken"
        marks["woken"] = time.thread_time()
    sends[phase[0]] += 1
    return send(self, command, *args, **kwargs)
redis.connection.AbstractConnection.send_packed_command = marking

def where(filename):
    _, found, inside = filename.partition("-packages/")
    if not found:
        return "ours" if filename.startswith(tree + "/") else "stdlib"
    package = inside.split("/", 1)[0]
    if package in ("flask", "werkzeug"):
        return "flask"
    return package if package in ("redis", "rq") else "other"

def held_get(hook=None):
    '''One POST and its held GET; the GET's counts by phase, or None if not held.'''
    check_id = post()
    phase[0] = "first"
    sends.update(first=0, woken=0)
    marks.clear()
    started = time.thread_time()
    if hook is not None:
        sys.setprofile(hook)
    answered = get(check_id)
    sys.setprofile(None)
    ended = time.thread_time()
    assert json.loads(answered)["status"] == "finished"
    if "woken" not in marks:
        return None
    return {
        "first_cpu_ms": (marks["woken"] - started) * 1e3,
        "woken_cpu_ms": (ended - marks["woken"]) * 1e3,
        "first_round_trips": sends["first"],
        "woken_round_trips": sends["woken"],
    }

for _ in range(50):
    held_get()

by_package = {"first": Counter(), "woken": Counter()}
by_function = Counter()
def hook(frame, event, arg):
    if event == "call":
        code = frame.f_code
        by_package[phase[0]][where(code.co_filename)] += 1
        if functions and phase[0] == "woken":
            name = code.co_filename.removeprefix(tree + "/").rpartition("-packages/")[2]
            by_function[f"{name}:{code.co_qualname}"] += 1

counted = 0
tries = 0
while counted < 100 and tries < 400:
    tries += 1
    snapshot = {name: Counter(counter) for name, counter in by_package.items()}
    functions_before = Counter(by_function)
    if held_get(hook) is None:  # ended before its first read: not counted
        by_package = snapshot
        by_function = functions_before
        continue
    counted += 1

runs = [got for got in (held_get() for _ in range(n)) if got is not None]
figures = {"held": len(runs) / n}
for name in ("first", "woken"):
    calls = by_package[name]
    figures[name + "_calls"] = sum(calls.values()) / counted
    for package in ("ours", "flask", "redis", "rq", "stdlib", "other"):
        figures[f"{name}_{package}"] = calls[package] / counted
for figure in ("first_round_trips", "woken_round_trips", "first_cpu_ms", "woken_cpu_ms"):
    figures[figure] = statistics.median(run[figure] for run in runs)
if functions:
    figures["functions"] = [
        [name, count / counted] for name, count in by_function.most_common(functions)
    ]
print(json.dumps(figures))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gets", type=int, default=300, help="held GETs per CPU figure")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", help="a git revision or the path of a tree")
    parser.add_argument("--functions", type=int, default=0, help="this tree's most called")
    args = parser.parse_args()
    print(f"start: {load()}")
    with contextlib.ExitStack() as stack:
        trees = new_and_old(stack, args.baseline)
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="smtpcheck-bench-")))
        server = EmbeddedRedis(tmp / "redis", persist=False).start()
        stack.callback(server.stop)
        target = stack.enter_context(smtp_target("lean"))
        env = bench_env(server.url, [target.smtp_port], target.dns_port)
        conn = connect(server.url)
        stack.callback(conn.close)
        stack.enter_context(pool(env, tmp, conn, 1))
        body = json.dumps(check_request(target.smtp_port))

        def measure(name: str, tree: Path) -> dict[str, Any]:
            functions = args.functions if name == "new" else 0
            argv = [str(tree), str(args.gets), body, str(functions)]
            return child_figures(tree, CHILD, argv, env)

        figures_in_turns(trees, args.rounds, measure, no_ratio="held")


if __name__ == "__main__":
    main()
