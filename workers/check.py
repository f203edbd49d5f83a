"""One check: plan the stages from the request, run them over a Connection,
map whatever stops them to exactly one outcome, and build the result JSON."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from smtpcheck.config import Settings
from smtpcheck.contract import PROBES, STAGES
from smtpcheck.contract import SECRET_MASK as REDACTED
from smtpcheck.message import build_message
from workers import protocol
from workers.connection import Connection, endpoint
from workers.errors import CheckAborted, ConnectionClosed, ReadTimeout
from workers.findings import findings
from workers.probes import run_probe
from workers.protocol import Capabilities, Reply, check_wire_text, printable
from workers.resolver import Resolver
from workers.result import Failure, policy_outcome, rejection_outcome, summarize
from workers.target import IPAddress, Target, permitted
from workers.tls import client_context, session_facts
from workers.transcript import Transcript

log = logging.getLogger(__name__)

QUIT_TIMEOUT = 5.0

#: A politeness gate (``workers.politeness``), optional so the engine runs
#: without Redis: called with the address about to be dialled, the check's
#: deadline (``time.monotonic()``) and a function that notes a line in the
#: transcript; held while the check talks to that address. It may wait, and
#: raises a CheckAborted when the deadline passes first.
Gate = Callable[
    [IPAddress, float, Callable[[str], None]], contextlib.AbstractContextManager[object]
]


@dataclass
class Plan:
    """The validated request, with every default applied."""

    host: str
    port: int = 25
    tls: str = "auto"
    tls_verify: bool = False
    tls_name: str | None = None
    tls_ca: str | None = None
    helo: str = "smtpcheck.invalid"
    username: str | None = None
    password: str | None = None
    mechanism: str = "auto"
    mail_from: str | None = None
    rcpt_to: list[str] = field(default_factory=list)
    data: str | None = None
    message: Mapping[str, Any] | None = None
    stop_after: str = "tls"
    timeouts: dict[str, float] = field(default_factory=dict)
    ip_version: int | None = None
    check_id: str | None = None
    probes: list[str] = field(default_factory=list)

    @classmethod
    def from_request(
        cls,
        request: Mapping[str, Any],
        settings: Settings,
        *,
        password: str | None = None,
        check_id: str | None = None,
    ) -> Plan:
        auth = request.get("auth") or None
        timeouts = dict(request.get("timeouts") or {})
        for key in ("connect", "command", "total"):
            default = getattr(settings.timeouts, key)
            cap = getattr(settings.limits.max_timeouts, key)
            timeouts[key] = float(min(timeouts.get(key) or default, cap))
        plan = cls(
            host=str(request["host"]),
            port=int(request.get("port") or 25),
            tls=str(request.get("tls") or "auto"),
            tls_verify=bool(request.get("tls_verify")),
            tls_name=request.get("tls_name"),
            tls_ca=request.get("tls_ca"),
            helo=str(request.get("helo") or settings.helo_name),
            username=auth.get("username") if auth else None,
            password=(password if password is not None else auth.get("password")) if auth else None,
            mechanism=str(auth.get("mechanism") or "auto") if auth else "auto",
            mail_from=request.get("mail_from"),
            rcpt_to=list(request.get("rcpt_to") or []),
            data=request.get("data"),
            message=request.get("message"),
            timeouts=timeouts,
            ip_version=request.get("ip_version"),
            check_id=check_id,
            probes=[p for p in request.get("probes") or [] if p in PROBES],
        )
        plan.stop_after = request.get("stop_after") or plan.implied_stop()
        if plan.stop_after not in STAGES:
            raise ValueError(f"stop_after must be one of {', '.join(STAGES)}")
        for value, what in (
            (plan.host, "host"),
            (plan.helo, "helo"),
            (plan.username or "", "auth.username"),
            (plan.password or "", "auth.password"),
            (plan.mail_from or "", "mail_from"),
            *((rcpt, "rcpt_to") for rcpt in plan.rcpt_to),
        ):
            check_wire_text(value, what)
        return plan

    def implied_stop(self) -> str:
        """The last stage the request implies."""
        if self.data is not None or self.message is not None:
            return "data"
        if self.rcpt_to:
            return "rcpt"
        if self.mail_from is not None:
            return "mail"
        if self.username is not None:
            return "auth"
        return "ehlo" if self.tls == "none" else "tls"

    def wants(self, stage: str) -> bool:
        return STAGES.index(stage) <= STAGES.index(self.stop_after)

    @property
    def implicit_tls(self) -> bool:
        return self.tls == "implicit" or (self.tls == "auto" and self.port == 465)


class Check:
    """Runs one plan. ``run()`` never raises for anything the server does."""

    def __init__(self, plan: Plan, settings: Settings, gate: Gate | None = None) -> None:
        self.plan = plan
        self.settings = settings
        self.gate = gate
        self._gate_held: contextlib.ExitStack | None = None
        self.transcript = Transcript()
        self.deadline = self.transcript.started + plan.timeouts["total"]
        self.conn = Connection(
            self.transcript, command_timeout=plan.timeouts["command"], deadline=self.deadline
        )
        self.stage = "connect"
        self.timings: dict[str, float] = {}
        self.failure: Failure | None = None
        self.capabilities: Capabilities | None = None
        self.address: IPAddress | None = None
        self._reverse: threading.Thread | None = None
        self._reverse_facts: dict[str, Any] = {}
        self.result: dict[str, Any] = {
            "check_id": plan.check_id,
            "ok": False,
            "outcome": None,
            "stage": "connect",
            "summary": "",
            "target": {
                "host": plan.host,
                "port": plan.port,
                "address": None,
                "addresses": [],
                "source": None,
            },
            "vantage": settings.vantage,
            "started_at": utc_timestamp(),
            "finished_at": None,
            "banner": None,
            "ehlo": None,
            "tls": None,
            "auth": None,
            "mail": None,
            "rcpt": [],
            "data": None,
            "dns": None,
            "probes": None,
            "findings": [],
            "timings": self.timings,
            "transcript": [],
        }

    # -- running -----------------------------------------------------------

    def run(self) -> dict[str, Any]:
        try:
            try:
                self._dialogue()
            except CheckAborted as exc:
                self._aborted(exc)
            finally:
                self._goodbye()
                self.conn.close()
            if self.plan.probes and self.result["banner"] is not None:
                self._probes()
        finally:
            self._release_gate()
        result = self.result
        result["ok"] = self.failure is None
        result["outcome"] = "ok" if self.failure is None else self.failure.outcome
        result["stage"] = self.stage
        result["dns"] = self._dns_facts()
        self.timings["total"] = self.transcript.elapsed_ms()
        result["summary"] = summarize(result, self.failure, self.plan.timeouts)
        result["findings"] = findings(result, slow_banner_ms=self.settings.slow_banner * 1000)
        result["finished_at"] = utc_timestamp()
        result["transcript"] = self.transcript.as_list()
        return result

    def _fail(
        self, outcome: str, detail: str = "", reply: Reply | None = None, subject: str = ""
    ) -> None:
        self.failure = Failure(outcome, self.stage, detail, reply, subject)

    def _aborted(self, exc: CheckAborted) -> None:
        outcome = exc.outcome
        detail = str(exc)
        if isinstance(exc, ReadTimeout):
            if exc.total:
                outcome = "timeout"
                detail = f"no reply before the check's {self.plan.timeouts['total']:g} s deadline"
            elif self.stage == "banner":
                outcome = "banner_timeout"
            else:
                detail = f"no complete reply within {self.plan.timeouts['command']:g} s"
        elif self.conn.total_expired and outcome in ("connect_timeout", "tls_error"):
            outcome = "timeout"
            detail = f"the check's {self.plan.timeouts['total']:g} s deadline passed"
        self.transcript.error(f"{outcome}: {detail}")
        self._fail(outcome, detail)

    def _timed(self, name: str, started: float) -> None:
        self.timings[name] = round((time.monotonic() - started) * 1000, 1)

    def _enter(self, stage: str) -> bool:
        """Move to ``stage`` if the plan wants it and nothing failed yet."""
        if self.failure is not None or not self.plan.wants(stage):
            return False
        self.stage = stage
        return True

    def _dialogue(self) -> None:
        self._connect()
        if self._enter("banner"):
            self._banner()
        if self._enter("ehlo"):
            self._ehlo()
        if self._enter("tls") and not self.conn.is_tls:
            self._starttls()
        if self.plan.username is not None and self._enter("auth"):
            self._auth()
        if self.plan.mail_from is not None and self._enter("mail"):
            self._mail()
        if self.plan.rcpt_to and self._enter("rcpt"):
            self._rcpt()
        if (self.plan.data is not None or self.plan.message is not None) and self._enter("data"):
            self._data()

    # -- stages --------------------------------------------------------------

    def _connect(self) -> None:
        plan = self.plan
        started = time.monotonic()
        target = Target(plan.host, plan.port)
        connect_deadline = min(started + plan.timeouts["connect"], self.deadline)
        resolver = Resolver(self.settings, connect_deadline)
        if not target.is_literal:
            wanted = {4: "A", 6: "AAAA"}.get(plan.ip_version or 0, "A/AAAA")
            self.transcript.note(f"resolving {plan.host} ({wanted})")
        try:
            target.addresses = resolver.addresses(plan.host, plan.ip_version)
        finally:
            self._timed("resolve", started)
        self.result["target"]["addresses"] = [str(a) for a in target.addresses]
        if not target.is_literal:
            shown = ", ".join(map(str, target.addresses))
            self.transcript.note(f"resolved {plan.host} to {shown}")
        try:
            candidates = permitted(target, self.settings)
        finally:
            for why in target.skipped:
                self.transcript.note(f"not dialling: {why}")
        started = time.monotonic()

        def trying(address: IPAddress) -> None:
            self.result["target"]["address"] = str(address)
            self._hold_gate(address)

        try:
            self.address = self.conn.open_first(
                candidates,
                plan.port,
                plan.timeouts["connect"],
                before=trying,
                after_failure=self._release_gate,
            )
        finally:
            # The worker's own address on this path (its egress, unless NAT
            # hides it), also when the connect failed.
            self.result["target"]["source"] = self.conn.source
        self._timed("connect", started)
        shown = endpoint(self.address, plan.port)
        self.transcript.note(f"connected to {shown} in {self.timings['connect']:g} ms")
        self._start_reverse_lookup()
        if plan.implicit_tls:
            self._handshake("implicit")

    def _hold_gate(self, address: IPAddress) -> None:
        """Enter the politeness gate for ``address``; held until the check is done with it."""
        if self.gate is None:
            return
        held = contextlib.ExitStack()
        held.enter_context(self.gate(address, self.deadline, self.transcript.note))
        self._gate_held = held

    def _release_gate(self) -> None:
        held, self._gate_held = self._gate_held, None
        if held is not None:
            held.close()

    def _banner(self) -> None:
        started = time.monotonic()
        reply = self.conn.read_banner()
        self._timed("banner", started)
        self.result["banner"] = {"code": reply.code, "text": reply.text}
        if reply.code == 220:
            return
        if reply.code in (421, 554) or reply.code >= 400:
            self._fail("service_unavailable", reply=reply)
        else:
            self._fail("protocol_error", f"unexpected greeting {printable(str(reply))!r}")

    def _hello(self) -> Capabilities | None:
        """EHLO, falling back to HELO on a 5xx. ``None`` when the stage failed."""
        name = self.plan.helo
        reply = self.conn.command("EHLO", name)
        if reply.positive:
            caps = protocol.parse_ehlo(reply)
            self._record_ehlo("EHLO", caps)
            return caps
        if reply.code == 421:
            self._fail("service_unavailable", reply=reply)
            return None
        if reply.transient:
            self._fail("temporary_failure", reply=reply, subject="EHLO")
            return None
        helo = self.conn.command("HELO", name)
        if helo.positive:
            caps = Capabilities(helo.lines[0], {})
            self._record_ehlo("HELO", caps)
            return caps
        self._fail("ehlo_rejected", reply=helo, subject=name)
        return None

    def _record_ehlo(self, verb: str, caps: Capabilities) -> None:
        before = self.result["ehlo"]
        self.result["ehlo"] = {
            "command": verb,
            "name": self.plan.helo,
            "greeting": caps.greeting,
            "keywords": {k: list(v) for k, v in caps.keywords.items()},
            "size": caps.size,
            "auth": list(caps.auth_mechanisms),
            "starttls": "STARTTLS" in caps,
        }
        if self.conn.is_tls and before is not None and "before_tls" not in before:
            self.result["ehlo"]["before_tls"] = before
        self.capabilities = caps

    def _ehlo(self) -> None:
        started = time.monotonic()
        self._hello()
        self._timed("ehlo", started)

    def _starttls(self) -> None:
        plan = self.plan
        caps = self.capabilities or Capabilities("", {})
        offered = "STARTTLS" in caps
        self.result["tls"] = {"mode": "starttls", "offered": offered, "established": False}
        if plan.tls == "none":
            return
        if not offered:
            if plan.tls == "starttls":
                self._fail("starttls_unavailable", "STARTTLS not in the EHLO reply")
            else:
                self.transcript.note("STARTTLS not offered; going on in plain text")
            return
        started = time.monotonic()
        reply = self.conn.command("STARTTLS")
        if reply.code != 220:
            self._fail(
                "temporary_failure" if reply.transient and reply.code != 454 else "tls_error",
                f"the server answered STARTTLS with {printable(str(reply))}",
                reply,
                "STARTTLS",
            )
            return
        self._handshake("starttls")
        self._timed("tls", started)
        if self.failure is None:
            # RFC 3207: forget what was learnt before TLS and ask again.
            self.capabilities = None
            started = time.monotonic()
            self._hello()
            self._timed("ehlo_tls", started)

    def _handshake(self, mode: str) -> None:
        plan = self.plan
        target = Target(plan.host, plan.port, tls_name=plan.tls_name)
        sni = target.server_hostname
        started = time.monotonic()
        self.transcript.note(f"starting TLS handshake (SNI {sni or 'none'})")
        ssl_object = self.conn.start_tls(client_context(), sni)
        self.conn.state.tls = True
        facts = session_facts(
            ssl_object, target.verify_name, self.settings.ca_file, extra_ca=plan.tls_ca
        )
        facts = {"mode": mode, "offered": True, **facts, "sni": sni}
        self.result["tls"] = facts
        if mode == "implicit":
            self._timed("tls", started)
        self.transcript.note(
            f"TLS established: {facts['version']} {facts['cipher']}; certificate "
            + ("verified" if facts["verified"] else f"NOT verified ({facts['verify_error']})")
            + ("" if target.verify_name else " (chain only: no name to check an IP against)")
        )
        if plan.tls_verify and not facts["verified"]:
            self.stage = "tls"
            self._fail("tls_untrusted", str(facts["verify_error"]))

    def _auth(self) -> None:
        plan = self.plan
        caps = self.capabilities or Capabilities("", {})
        offered = caps.auth_mechanisms
        mechanism = protocol.choose_mechanism(offered, plan.mechanism)
        self.result["auth"] = {"mechanism": mechanism, "offered": list(offered), "accepted": False}
        if mechanism is None:
            wanted = "any" if plan.mechanism == "auto" else plan.mechanism
            has = ", ".join(offered) if offered else "no AUTH in the EHLO reply"
            self._fail("auth_unavailable", f"wanted {wanted}; offered: {has}")
            return
        started = time.monotonic()
        reply = self._auth_exchange(mechanism, plan.username or "", plan.password or "")
        self.conn.state.replied("AUTH", reply)
        self._timed("auth", started)
        self.result["auth"].update(code=reply.code, text=reply.text)
        if reply.code == 235:
            self.result["auth"]["accepted"] = True
            return
        policy = policy_outcome(reply)
        if policy == "tls_required":
            self._fail(policy, reply=reply, subject="AUTH")
        elif reply.code == 504:
            self._fail("auth_unavailable", f"{mechanism} refused as unrecognised", reply)
        elif reply.transient:
            self._fail("temporary_failure", reply=reply, subject="AUTH")
        elif reply.intermediate:
            self._fail("protocol_error", f"unexpected {printable(str(reply))!r} during AUTH")
        else:
            self._fail("auth_failed", reply=reply)

    def _auth_exchange(self, mechanism: str, username: str, password: str) -> Reply:
        """Run one AUTH exchange; client payloads are recorded as ****."""
        conn = self.conn
        conn.state.check("AUTH")
        if mechanism == "PLAIN":
            initial = protocol.auth_plain(username, password)
            return self._auth_step(
                protocol.command("AUTH", "PLAIN", initial), f"AUTH PLAIN {REDACTED}"
            )
        reply = conn.raw_command(protocol.command("AUTH", mechanism), f"AUTH {mechanism}")
        if mechanism == "LOGIN":
            answers = [protocol.auth_login(username), protocol.auth_login(password)]
            for answer in answers:
                if reply.code != 334:
                    return reply
                prompt = protocol.decode_challenge(reply.text)
                self.transcript.note(f"server asks {printable(prompt.decode('latin-1'))!r}")
                reply = self._auth_step(protocol.command(answer), REDACTED)
            return reply
        if reply.code != 334:
            return reply
        answer = protocol.auth_cram_md5(username, password, reply.text)
        return self._auth_step(protocol.command(answer), REDACTED)

    def _auth_step(self, line: bytes, shown: str) -> Reply:
        reply = self.conn.raw_command(line, shown)
        if reply.code == 334 and line.startswith(b"AUTH PLAIN"):
            # Unexpected challenge after an initial response: cancel (RFC 4954 "*").
            reply = self.conn.raw_command(b"*\r\n", "*")
            self._fail("protocol_error", "server sent a challenge after the PLAIN response")
        return reply

    def _mail(self) -> None:
        plan = self.plan
        address = plan.mail_from or ""
        params: list[str] = []
        caps = self.capabilities or Capabilities("", {})
        if not all(part.isascii() for part in [address, *plan.rcpt_to]) and "SMTPUTF8" in caps:
            params.append("SMTPUTF8")
        started = time.monotonic()
        reply = self.conn.envelope("MAIL", protocol.mail_from(address, tuple(params)))
        self._timed("mail", started)
        self.result["mail"] = {
            "from": address,
            "code": reply.code,
            "text": reply.text,
            "accepted": reply.positive,
        }
        if not reply.positive:
            self._fail(rejection_outcome("mail", reply), reply=reply, subject=address or "<>")
            if self.failure and self.failure.outcome in ("tls_required", "auth_required"):
                self.failure.subject = "MAIL FROM"

    def _rcpt(self) -> None:
        started = time.monotonic()
        for address in self.plan.rcpt_to:
            reply = self.conn.envelope("RCPT", protocol.rcpt_to(address))
            self.result["rcpt"].append(
                {"to": address, "code": reply.code, "text": reply.text, "accepted": reply.positive}
            )
            if not reply.positive and self.failure is None:
                outcome = rejection_outcome("rcpt", reply)
                subject = "RCPT TO" if outcome in ("tls_required", "auth_required") else address
                self._fail(outcome, reply=reply, subject=subject)
        self._timed("rcpt", started)

    def _data(self) -> None:
        plan = self.plan
        if plan.data is not None:
            message = plan.data.encode("utf-8")
        else:
            message = build_message(
                plan.message,
                mail_from=plan.mail_from,
                rcpt_to=plan.rcpt_to,
                helo=plan.helo,
                check_id=plan.check_id,
            )
        started = time.monotonic()
        reply = self.conn.command("DATA")
        if reply.code != 354:
            self.result["data"] = {"code": reply.code, "text": reply.text, "accepted": False}
            self._fail(rejection_outcome("data", reply), reply=reply, subject="DATA")
            return
        payload = protocol.message_payload(message)
        reply = self.conn.send_message(payload)
        self._timed("data", started)
        self.result["data"] = {
            "code": reply.code,
            "text": reply.text,
            "accepted": reply.positive,
            "bytes": len(payload),
        }
        if not reply.positive:
            self._fail(rejection_outcome("data", reply), reply=reply, subject="the message")

    # -- after the dialogue ------------------------------------------------

    def _start_reverse_lookup(self) -> None:
        """PTR and forward confirmation of the dialled address, while we talk.

        A non-public address (let through by SMTPCHECK_ALLOW_NETWORKS) is not
        looked up in public DNS, where it can only time out or say nothing;
        an operator's own resolvers (SMTPCHECK_DNS_SERVERS) are asked always.
        """
        address = self.address
        assert address is not None
        if not address.is_global and not self.settings.dns_servers:
            self._reverse_facts = {
                "address": str(address),
                "ptr": [],
                "ptr_error": None,
                "forward_confirmed": None,
                "ptr_skipped": "not a public address, and no SMTPCHECK_DNS_SERVERS to ask",
            }
            return
        resolver = Resolver(self.settings, self.deadline)

        def lookup() -> None:
            self._reverse_facts = resolver.reverse(address)

        self._reverse = threading.Thread(target=lookup, daemon=True, name="smtpcheck-ptr")
        self._reverse.start()

    def _dns_facts(self) -> dict[str, Any] | None:
        if self.address is None:
            return None
        if self._reverse is not None:
            left = min(self.deadline - time.monotonic(), self.settings.dns_timeout)
            self._reverse.join(max(left, 0))
        facts = dict(self._reverse_facts) or {
            "address": str(self.address),
            "ptr": [],
            "ptr_error": "the PTR lookup did not finish before the check's deadline",
            "forward_confirmed": None,
        }
        names = [name.lower() for name in facts.get("ptr") or []]
        banner = self.result["banner"]
        ehlo = self.result["ehlo"]
        hosts = {
            "banner": _first_word(banner["text"]) if banner else None,
            "ehlo": _first_word(ehlo["greeting"]) if ehlo else None,
        }
        for source, host in hosts.items():
            facts[f"{source}_host"] = host
            facts[f"{source}_matches_ptr"] = (host.lower() in names) if host and names else None
        return facts

    def _probes(self) -> None:
        address = self.address
        if address is None:
            return
        plan = self.plan
        sni = Target(plan.host, plan.port, tls_name=plan.tls_name).server_hostname

        def connection() -> Connection:
            conn = Connection(
                self.transcript, command_timeout=plan.timeouts["command"], deadline=self.deadline
            )
            conn.open(address, plan.port, plan.timeouts["connect"])
            if plan.implicit_tls:
                upgrade(conn)
            return conn

        def upgrade(conn: Connection) -> None:
            conn.start_tls(client_context(), sni)
            conn.state.tls = True

        use_tls = plan.tls != "none" and not plan.implicit_tls
        self.result["probes"] = {}
        for name in plan.probes:
            self.transcript.note(f"probe {name}: new connection")
            started = time.monotonic()
            self.result["probes"][name] = run_probe(
                name, connection, plan.helo, upgrade if use_tls else None
            )
            self._timed(f"probe_{name}", started)
            self.transcript.note(f"probe {name}: {self.result['probes'][name]['result']}")

    # -- ending --------------------------------------------------------------

    def _goodbye(self) -> None:
        """RSET if a transaction is open, then QUIT; never changes the verdict."""
        conn = self.conn
        if conn.stream is None or conn.state.state in (
            protocol.State.CONNECTED,
            protocol.State.DATA,
            protocol.State.CLOSED,
        ):
            return
        if self.failure is not None and self.failure.outcome in (
            "connection_closed",
            "protocol_error",
            "timeout",
            "tls_error",
        ):
            return  # the stream is in no state for more talk
        conn.command_timeout = min(conn.command_timeout, QUIT_TIMEOUT)
        try:
            if conn.state.in_transaction:
                conn.command("RSET")
            conn.command("QUIT")
        except (CheckAborted, OSError) as exc:
            if not isinstance(exc, ConnectionClosed):
                self.transcript.note(f"no answer to QUIT ({exc})")


def _first_word(text: str) -> str | None:
    words = text.split()
    return words[0].rstrip(".,") if words and "." in words[0] else None


def utc_timestamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def run_check(
    request: Mapping[str, Any],
    settings: Settings,
    *,
    password: str | None = None,
    check_id: str | None = None,
    gate: Gate | None = None,
) -> dict[str, Any]:
    """Run the check a normalized request asks for and return the result JSON.

    ``gate``: see :data:`Gate`; None (``smtpcheck check --local``) runs ungated.
    """
    if request.get("mx"):
        from workers.domain import run_domain_check  # domain.py imports this module

        return run_domain_check(request, settings, password=password, check_id=check_id, gate=gate)
    plan = Plan.from_request(request, settings, password=password, check_id=check_id)
    log.info("check %s: %s:%s stop_after=%s", check_id, plan.host, plan.port, plan.stop_after)
    return Check(plan, settings, gate).run()
