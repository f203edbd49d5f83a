"""What one ``POST /v1/checks`` costs the API, counted rather than timed.

The bench's check body (bench/service.py ``check_request``) is POSTed to the
app in-process, through its WSGI callable with a prebuilt environ (not
Flask's test client, which adds its own work), against a fresh embedded
redis-server, by one tree's code in a child process. The child prints:

- ``calls``: Python calls per POST (a profile hook), and the same split by
  where the called code lives: ``ours`` (the tree: service/, smtpcheck/),
  ``flask`` (Flask and werkzeug), ``marshmallow``, ``redis``, ``rq``,
  ``stdlib`` and ``other`` packages;
- ``round_trips``: batches the API writes to Redis per POST (each
  ``send_packed_command`` of a redis-py connection), ``commands``: the
  commands Redis ran per POST (INFO commandstats, a script's own included),
  and ``script_us``: Redis's microseconds in the POST's script (EVALSHA);
- ``cpu_ms``: the child's CPU per POST over ``--posts`` POSTs (getrusage).

With ``--baseline REV|PATH`` that tree (a revision is checked out in a
temporary git worktree) runs the same rounds in turns with this one, and the
script prints new/old of each figure and the load beside them.

    .venv/bin/python -m bench.post_profile [--posts N] [--rounds R] [--baseline REV|PATH]
        [--functions K] [--host HOST]

``--functions K`` also prints this tree's K most called functions per POST;
``--host`` POSTs that host instead of the bench's ``127.0.0.1``: a name such as
``mx.example.com`` (the API resolves nothing and nothing here dials it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import redis

from bench.engine import figures_in_turns, load, new_and_old
from bench.service import bench_env
from smtpcheck.embedded_redis import EmbeddedRedis

#: The check body's port: allowed, never dialled (nothing here runs the check).
PORT = 2525
#: The bench's check body's host (bench/service.py ``check_request``).
HOST = "127.0.0.1"

#: Run in a child process whose PYTHONPATH is one tree's root; prints JSON.
CHILD = """
import io, json, os, resource, sys
from collections import Counter
import redis
import redis.connection
from service import create_app
from smtpcheck.config import Settings

tree, n, port, functions = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
host = sys.argv[5]
settings = Settings.from_env()
app = create_app(settings)
key = os.environ["SMTPCHECK_API_KEYS"].split(",")[0].partition(":")[2]
payload = json.dumps({"host": host, "port": port, "tls": "none", "stop_after": "ehlo"})
payload = payload.encode()
environ = {
    "REQUEST_METHOD": "POST", "SCRIPT_NAME": "", "PATH_INFO": "/v1/checks",
    "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8025",
    "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "40000",
    "HTTP_HOST": "127.0.0.1:8025", "HTTP_AUTHORIZATION": "Bearer " + key,
    "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(payload)),
    "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr,
    "wsgi.multithread": True, "wsgi.multiprocess": True, "wsgi.run_once": False,
}

def start_response(status, headers, exc_info=None):
    assert status.startswith("202"), status

def post():
    answer = app({**environ, "wsgi.input": io.BytesIO(payload)}, start_response)
    try:
        b"".join(answer)
    finally:
        answer.close()

def where(filename):
    _, found, inside = filename.partition("-packages/")
    if not found:
        return "ours" if filename.startswith(tree + "/") else "stdlib"
    package = inside.split("/", 1)[0]
    if package in ("flask", "werkzeug"):
        return "flask"
    return package if package in ("marshmallow", "redis", "rq") else "other"

for _ in range(100):
    post()

counted = 100
by_package, by_function = Counter(), Counter()
def hook(frame, event, arg):
    if event == "call":
        code = frame.f_code
        by_package[where(code.co_filename)] += 1
        if functions:
            name = code.co_filename.removeprefix(tree + "/").rpartition("-packages/")[2]
            by_function[f"{name}:{code.co_qualname}"] += 1
sys.setprofile(hook)
for _ in range(counted):
    post()
sys.setprofile(None)

sent = [0]
send = redis.connection.AbstractConnection.send_packed_command
def counting(self, *args, **kwargs):
    sent[0] += 1
    return send(self, *args, **kwargs)
monitor = redis.Redis.from_url(os.environ["REDIS_URL"])
def commands():
    stats = monitor.info("commandstats")
    script = stats.get("cmdstat_evalsha", {}).get("usec", 0)
    return sum(v["calls"] for v in stats.values()), script
before, script_before = commands()
redis.connection.AbstractConnection.send_packed_command = counting
for _ in range(counted):
    post()
redis.connection.AbstractConnection.send_packed_command = send
after, script_after = commands()
ran = after - before - 1  # the INFO itself
monitor.close()

def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
started = cpu()
for _ in range(n):
    post()
figures = {
    "calls": sum(by_package.values()) / counted,
    **{
        name: by_package[name] / counted
        for name in ("ours", "flask", "marshmallow", "redis", "rq", "stdlib", "other")
    },
    "round_trips": sent[0] / counted,
    "commands": ran / counted,
    "script_us": (script_after - script_before) / counted,
    "cpu_ms": (cpu() - started) / n * 1e3,
}
if functions:
    figures["functions"] = [
        [name, count / counted] for name, count in by_function.most_common(functions)
    ]
print(json.dumps(figures))
"""


def figures_of(
    tree: Path, env: dict[str, str], posts: int, functions: int, host: str = HOST
) -> dict:
    """One child's figures: ``tree``'s API, ``posts`` POSTs of ``host`` timed."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(tree), str(posts), str(PORT), str(functions), host],
        env={**env, "PYTHONPATH": str(tree)},
        cwd=tree,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the child on {tree} failed:\n{done.stderr}")
    figures: dict = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=1000, help="POSTs per CPU figure")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", help="a git revision or the path of a tree")
    parser.add_argument("--functions", type=int, default=0, help="this tree's most called")
    parser.add_argument("--host", default=HOST, help="the check body's host")
    args = parser.parse_args()
    print(f"start: {load()}")
    with contextlib.ExitStack() as stack:
        trees = new_and_old(stack, args.baseline)
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="smtpcheck-bench-")))
        server = EmbeddedRedis(tmp / "redis", persist=False).start()
        stack.callback(server.stop)
        env = bench_env(server.url, [PORT], 53)
        monitor = stack.enter_context(contextlib.closing(redis.Redis.from_url(server.url)))

        def measure(name: str, tree: Path) -> dict[str, Any]:
            monitor.flushall()
            monitor.config_resetstat()
            functions = args.functions if name == "new" else 0
            return figures_of(tree, env, args.posts, functions, args.host)

        figures_in_turns(trees, args.rounds, measure, no_ratio="other")


if __name__ == "__main__":
    main()
