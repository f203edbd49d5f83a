"""``smtpcheck check``: what a person sees at the terminal, and the exit status."""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from cli.dev import read_or_create_secret
from cli.devlock import DevLock
from cli.main import main
from cli.parser import build_parser
from smtpcheck.embedded_redis import free_port
from tests.dns_server import DNSServer
from tests.smtp_servers import LOCAL_DOMAIN, USERS, Certificates, ScriptedServer, SMTPTarget


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, dns_server: Callable[..., DNSServer]) -> None:
    for name in list(os.environ):
        if name.startswith("SMTPCHECK_") or name == "REDIS_URL":
            monkeypatch.delenv(name)
    monkeypatch.setenv("SMTPCHECK_HELO_NAME", "checker.local.test")
    # PTR lookups of 127.0.0.1 go to a resolver on this machine, never outside.
    dns = dns_server({"1.0.0.127.in-addr.arpa.": {"PTR": ["mail.local.test."]}})
    monkeypatch.setenv("SMTPCHECK_DNS_SERVERS", f"127.0.0.1:{dns.port}")


def allow(monkeypatch: pytest.MonkeyPatch, *ports: int) -> None:
    monkeypatch.setenv("SMTPCHECK_ALLOW_NETWORKS", "127.0.0.0/8")
    monkeypatch.setenv("SMTPCHECK_ALLOWED_PORTS", ",".join(map(str, ports)))


def test_local_check_prints_a_swaks_like_transcript(
    smtp_target: Callable[..., SMTPTarget],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    target = smtp_target(tls="none")
    allow(monkeypatch, target.port)
    code = main(
        [
            "check", "127.0.0.1", "--port", str(target.port), "--local", "--tls", "none",
            "--auth-user", "alice", "--auth-password", USERS["alice"],
            "--auth-mechanism", "plain",
            "--from", "alice@example.org", "--to", f"bob@{LOCAL_DOMAIN}",
            "--subject", "cli test", "--body", "hello",
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "=== connect" in out
    assert "<- 220 " in out
    assert "-> EHLO checker.local.test" in out
    assert "-> AUTH PLAIN ****" in out or ("-> AUTH PLAIN" in out and "-> ****" in out)
    assert USERS["alice"] not in out
    assert "PASS" in out
    assert len(target.received) == 1
    assert b"Subject: cli test" in target.received[0].data


def test_local_check_starttls_uses_tls_markers(
    smtp_target: Callable[..., SMTPTarget],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    target = smtp_target(tls="starttls")
    allow(monkeypatch, target.port)
    code = main(
        ["check", "127.0.0.1", "--port", str(target.port), "--local", "--tls", "starttls",
         "--stop-after", "tls"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "-> STARTTLS" in out
    assert "~> EHLO" in out and "<~ 250" in out


def test_local_check_not_ok_exits_1(
    smtp_target: Callable[..., SMTPTarget],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    target = smtp_target(tls="none")
    allow(monkeypatch, target.port)
    code = main(
        ["check", "127.0.0.1", "--port", str(target.port), "--local", "--tls", "none",
         "--from", "a@example.org", "--to", f"nobody@{LOCAL_DOMAIN}"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL" in out and "recipient_rejected" in out
    assert "<- 550" in out


def test_local_check_json_output_parses(
    smtp_target: Callable[..., SMTPTarget],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    target = smtp_target(tls="none")
    allow(monkeypatch, target.port)
    code = main(
        ["check", "127.0.0.1", "--port", str(target.port), "--local", "--json",
         "--stop-after", "ehlo"]
    )  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert code == 0
    assert result["ok"] is True
    assert result["outcome"] == "ok"
    assert result["banner"]["code"] == 220
    assert result["transcript"][0]["dir"] == "note"


def test_message_from_stdin(
    smtp_target: Callable[..., SMTPTarget],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    target = smtp_target(tls="none")
    allow(monkeypatch, target.port)
    message = b"From: a@example.org\r\nTo: bob@local.test\r\nSubject: piped\r\n\r\n.dot line\r\n"
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(message)))
    code = main(
        ["check", "127.0.0.1", "--port", str(target.port), "--local", "--tls", "none",
         "--from", "a@example.org", "--to", f"bob@{LOCAL_DOMAIN}", "--data-file", "-"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().out
    assert b"Subject: piped" in target.received[0].data
    assert b"\r\n.dot line" in target.received[0].data  # dot-stuffed on the wire, unstuffed here


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--from", "a@example.org\r\nRCPT TO:<victim@example.com>", "--to", "b@x.test"], "--from"),
        (["--helo", "x\nQUIT"], "--helo"),
        (["--from", "a@example.org", "--to", "b@x.test\r\nDATA"], "--to"),
        (["--auth-user", "u\r\nx", "--auth-password", "p"], "--auth-user"),
    ],
)
def test_line_breaks_refused_before_any_connection(
    args: list[str],
    field: str,
    scripted_server: Callable[..., ScriptedServer],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    connections: list[object] = []

    def script(sock: socket.socket) -> None:
        connections.append(sock)
        sock.sendall(b"220 hi\r\n")

    server = scripted_server(script)
    allow(monkeypatch, server.port)
    code = main(["check", "127.0.0.1", "--port", str(server.port), "--local", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert field in err and "control characters or line separators" in err
    remote = ["check", "127.0.0.1", "--port", str(server.port), "--url", "http://127.0.0.1:9"]
    assert main([*remote, *args]) == 2  # the client refuses it too, service or not
    assert connections == []


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "mx.example.com", "--tls", "sometimes"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    assert main(["check", "mx.example.com", "--port", "587", "--stop-after", "auth"]) == 2
    assert "--stop-after" in capsys.readouterr().err
    assert main(["check", "mx.example.com", "--data-file", "/nonexistent/message.eml"]) == 2
    assert "--data-file" in capsys.readouterr().err
    assert main([]) == 2


def test_local_forbidden_target_says_how_to_allow_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "127.0.0.1", "--local"]) == 2
    err = capsys.readouterr().err
    assert "loopback" in err and "SMTPCHECK_ALLOW_NETWORKS" in err


def test_service_unreachable_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()  # nothing listens there
    code = main(["check", "mx.example.com", "--url", f"http://127.0.0.1:{port}", "--api-key", "k"])
    assert code == 3
    err = capsys.readouterr().err
    assert f"cannot reach the smtpcheck service at http://127.0.0.1:{port}" in err


def test_dev_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    first, second = DevLock(tmp_path / "dev.lock"), DevLock(tmp_path / "dev.lock")
    assert first.acquire() == (True, {})
    first.write({"dev": os.getpid(), "redis": 12345})
    acquired, holder = second.acquire()
    assert not acquired and holder == {"dev": os.getpid(), "redis": 12345}
    first.release()
    assert not (tmp_path / "dev.lock").exists()
    assert second.acquire()[0]
    second.release()


def test_secret_files_are_private_and_stable(tmp_path: Path) -> None:
    key = read_or_create_secret(tmp_path / "secret_key")
    assert len(key) >= 32
    assert stat.S_IMODE((tmp_path / "secret_key").stat().st_mode) == 0o600
    assert read_or_create_secret(tmp_path / "secret_key") == key


def test_local_check_with_probes_prints_the_findings_block(
    smtp_target: Callable[..., SMTPTarget],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    target = smtp_target(tls="none")
    allow(monkeypatch, target.port)
    code = main(
        ["check", "127.0.0.1", "--port", str(target.port), "--local",
         "--probe", "open_relay", "--probe", "vrfy"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "=== probe open_relay: closed" in out
    findings = out[out.index("Findings:") :].splitlines()
    assert findings[1].startswith("  [WARN]")  # warnings before passes
    assert "  [PASS] relay_closed: The server refuses to relay for outsiders" in findings
    assert any(line.startswith("  [PASS] vrfy_disabled") for line in findings)


def test_unknown_probe_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "mx.example.com", "--local", "--probe", "portscan"]) == 2
    assert "argument --probe: invalid choice: 'portscan'" in capsys.readouterr().err


@pytest.mark.parametrize("vantage", ["all", "../etc", "-x", "eu west"])
def test_worker_refuses_a_vantage_name_that_is_not_one(
    vantage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["worker", f"--vantage={vantage}"]) == 2
    assert "cannot name a vantage" in capsys.readouterr().err


def test_local_check_tls_name_and_tls_ca(
    smtp_target: Callable[..., SMTPTarget],
    certificates: Certificates,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    target = smtp_target(tls="implicit")
    allow(monkeypatch, target.port)
    base = ["check", "127.0.0.1", "--port", str(target.port), "--local", "--tls", "implicit",
            "--tls-name", "mail.local.test", "--tls-verify", "--json"]  # fmt: skip

    assert main([*base, "--tls-ca", certificates.ca_file]) == 0  # trusted for this check only
    tls = json.loads(capsys.readouterr().out)["tls"]
    assert tls["sni"] == tls["verify_name"] == "mail.local.test"
    assert tls["verified"] is True

    assert main(base) == 1  # no SMTPCHECK_CA_FILE: the test CA is not trusted
    assert json.loads(capsys.readouterr().out)["outcome"] == "tls_untrusted"

    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    assert main([*base, "--tls-ca", str(not_pem)]) == 2
    assert "--tls-ca" in capsys.readouterr().err


def test_auth_password_from_the_environment_a_file_or_stdin(
    smtp_target: Callable[..., SMTPTarget],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    target = smtp_target(tls="none")
    allow(monkeypatch, target.port)
    base = ["check", "127.0.0.1", "--port", str(target.port), "--local", "--tls", "none",
            "--auth-user", "alice", "--auth-mechanism", "plain",
            "--stop-after", "auth"]  # fmt: skip
    secret = tmp_path / "password"
    secret.write_text(USERS["alice"] + "\n")
    monkeypatch.setenv("SMTPCHECK_AUTH_PASSWORD", USERS["alice"])
    assert main(base) == 0
    monkeypatch.setenv("SMTPCHECK_AUTH_PASSWORD", "wrong")  # the file comes first
    assert main([*base, "--auth-password-file", str(secret)]) == 0
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(USERS["alice"].encode())))
    assert main([*base, "--auth-password-file", "-"]) == 0
    out = capsys.readouterr().out
    assert out.count("PASS  ok at stage auth") == 3 and USERS["alice"] not in out


def test_a_missing_password_is_asked_for_only_after_the_target_is_valid(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    asked: list[str] = []
    monkeypatch.setattr("getpass.getpass", lambda prompt: asked.append(prompt) or "pw")
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    code = main(["check", "bad host!", "--local", "--auth-user", "alice"])
    assert code == 2 and not asked
    assert "invalid HOST" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    code = main(["check", "127.0.0.1", "--url", "http://127.0.0.1:9", "--auth-user", "alice"])
    err = capsys.readouterr().err
    assert code == 2 and not asked
    assert "SMTPCHECK_AUTH_PASSWORD" in err and "--auth-password-file" in err


def test_version_and_help_for_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("smtpcheck ")
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(commands.choices) >= {"dev", "api", "worker", "check", "list", "cancel"}
    for name, command in commands.choices.items():
        for action in command._actions:
            assert action.help, (name, action.option_strings or action.dest)
    assert main(["check", "--help"]) == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "--auth-password-file" in text and "NO_COLOR" in text


def test_message_headers_retry_and_callback_options_build_the_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cli.request import build_request
    from smtpcheck.config import Settings

    def built(*options: str, **env: str) -> dict[str, object]:
        args = build_parser().parse_args(["check", "mx.example.com", *options])
        return build_request(args, Settings.from_env(env))[0]

    secret_file = tmp_path / "hook-secret"
    secret_file.write_text("from-the-file-0123456789abcdef\n")
    request = built(
        "--from", "a@example.org", "--to", "b@example.com", "--subject", "hi",
        "--header", "X-Ticket: 4711", "--header", "Reply-To:  c@example.org",
        "--retry-temporary", "--retry-attempts", "3", "--retry-delay", "30",
        "--callback-url", "https://hooks.example.org/smtp",
        "--callback-secret-file", str(secret_file),
        SMTPCHECK_CALLBACK_SECRET="from-the-environment-0123456789",
    )  # fmt: skip
    assert request["message"] == {
        "subject": "hi",
        "headers": {"X-Ticket": "4711", "Reply-To": "c@example.org"},
    }
    assert request["retry_temporary"] is True
    assert request["retry"] == {"attempts": 3, "delay": 30.0}
    assert request["callback"] == {
        "url": "https://hooks.example.org/smtp",
        "secret": "from-the-file-0123456789abcdef",  # the file comes first
    }
    plain = built("--auth-user", "alice", "--auth-allow-plaintext", SMTPCHECK_AUTH_PASSWORD="pw")
    assert plain["auth"] == {"username": "alice", "password": "pw", "allow_plaintext": True}
    hook = built("--callback-url", "https://h.example.org/", SMTPCHECK_CALLBACK_SECRET="s" * 32)
    assert hook["callback"] == {"url": "https://h.example.org/", "secret": "s" * 32}

    for options, says in (
        (["--callback-url", "https://h.example.org/"], "SMTPCHECK_CALLBACK_SECRET"),
        (["--callback-secret-file", str(secret_file)], "needs --callback-url"),
        (["--retry-attempts", "2"], "need --retry-temporary"),
        (["--auth-allow-plaintext"], "need --auth-user"),
        (["--header", "no colon"], "'Name: value'"),
        (["--header", "A: 1", "--data-file", str(secret_file)], "not both"),
        (["--local", "--callback-url", "https://h.example.org/"], "needs a service"),
    ):
        assert main(["check", "mx.example.com", *options]) == 2, options
        assert says in capsys.readouterr().err, options


#: What the client commands never load: the API's web stack, Redis and RQ,
#: gunicorn, the SMTP engine and its DNS library, and the crypto the
#: service's schema needs only for a ``tls_ca``.
NOT_FOR_A_CLIENT = ("flask", "werkzeug", "redis", "rq", "limits", "gunicorn", "gevent",
                    "workers", "dns", "cryptography")  # fmt: skip


def test_the_client_commands_load_only_what_a_client_needs() -> None:
    """``check``, ``list`` and ``cancel`` against a service: in a fresh
    interpreter, none of the API's or the worker's stack is imported (it
    cost about 0.4 s of CPU at every start). The request is still
    validated here, by the service's own schema, before anything is sent."""
    import subprocess
    import sys

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    script = f"""
import sys
from cli.main import main
codes = [
    main(["check", "mx.example.com", "--url", "{url}", "--stop-after", "banner"]),
    main(["check", "mx.example.com", "--url", "{url}", "--port", "0"]),
    main(["list", "--url", "{url}"]),
    main(["cancel", "some-id", "--url", "{url}"]),
]
print(codes, " ".join(sorted(sys.modules)))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMTPCHECK_")}
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
    )
    modules = done.stdout.partition("] ")[2]
    assert done.stdout.startswith("[3, 2, 3, 3] "), done.stdout + done.stderr
    assert "invalid --port (port)" in done.stderr  # refused here, before any connection
    loaded = {name.split(".")[0] for name in modules.split()}
    assert not loaded & set(NOT_FOR_A_CLIENT), sorted(loaded & set(NOT_FOR_A_CLIENT))
    assert "cli.dev" not in modules.split() and "cli.api" not in modules.split()
