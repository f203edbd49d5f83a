"""One check of one host: the glue around the Dialogue (workers.dialogue).

It resolves the host, applies the target policy and the politeness gate,
opens the Connection, pumps the dialogue over it, runs the probes asked for,
and builds the result JSON. Every verdict is the dialogue's (and so
workers.verdict's); nothing here reads a reply code."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from smtpcheck.config import Settings
from smtpcheck.contract import CheckRequest
from smtpcheck.message import build_message
from workers.connection import Connection, endpoint
from workers.dialogue import Dialogue, Script
from workers.driver import pump
from workers.errors import CheckAborted
from workers.findings import findings
from workers.plan import Plan
from workers.probes import run_probes
from workers.resolver import Resolver, ReverseLookup
from workers.result import reply_of, summarize, utc_timestamp
from workers.target import IPAddress, Target, permitted
from workers.tls import client_context, session_facts
from workers.transcript import Transcript

log = logging.getLogger(__name__)

#: A politeness gate (``workers.politeness``), optional so the engine runs
#: without Redis: called with the address about to be dialled, the check's
#: deadline (``time.monotonic()``) and a function that notes a line in the
#: transcript; held while the check talks to that address. It may wait, and
#: raises a CheckAborted when the deadline passes first.
Gate = Callable[
    [IPAddress, float, Callable[[str], None]], contextlib.AbstractContextManager[object]
]


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
        self.dialogue = Dialogue(self._script())
        self.timings: dict[str, float] = {}
        self.address: IPAddress | None = None
        self._reverse: ReverseLookup | None = None
        self._reverse_facts: dict[str, Any] = {}
        self.result: dict[str, Any] = {
            "check_id": plan.check_id,
            "ok": False,
            "outcome": None,
            "stage": "connect",
            "summary": "",
            "reply": None,
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
            "dns": None,
            "probes": None,
            "findings": [],
            "timings": self.timings,
            "transcript": [],
        }

    def _script(self) -> Script:
        plan = self.plan
        message: bytes | None = None
        if plan.data is not None:
            message = plan.data.encode("utf-8")
        elif plan.message is not None:
            message = build_message(
                plan.message,
                mail_from=plan.mail_from,
                rcpt_to=plan.rcpt_to,
                helo=plan.helo,
                check_id=plan.check_id,
            )
        return Script(
            helo=plan.helo,
            stop_after=plan.stop_after,
            tls=plan.tls,
            implicit_tls=plan.implicit_tls,
            tls_verify=plan.tls_verify,
            username=plan.username,
            password=plan.password,
            mechanism=plan.mechanism,
            allow_plaintext=plan.allow_plaintext,
            mail_from=plan.mail_from,
            rcpt_to=plan.rcpt_to,
            message=message,
        )

    # -- running -----------------------------------------------------------

    def run(self) -> dict[str, Any]:
        dialogue = self.dialogue
        try:
            try:
                self._connect()
                pump(dialogue, self.conn, self._handshake, self.timings)
            except CheckAborted as exc:
                dialogue.abort(exc, total_expired=self.conn.total_expired)
                failure = dialogue.failure
                if failure is not None:
                    self.transcript.error(f"{failure.outcome}: {failure.detail}")
            finally:
                self.conn.close()
            if self.plan.probes and dialogue.facts["banner"] is not None:
                self._probes()
        finally:
            self._release_gate()
        return self._result()

    def _result(self) -> dict[str, Any]:
        result, dialogue = self.result, self.dialogue
        failure = dialogue.failure
        result.update(dialogue.facts)
        result["ok"] = failure is None
        result["outcome"] = "ok" if failure is None else str(failure.outcome)
        result["stage"] = failure.stage if failure is not None else dialogue.stage
        result["reply"] = reply_of(failure)
        result["dns"] = self._dns_facts()
        self.timings["total"] = self.transcript.elapsed_ms()
        result["summary"] = summarize(result, failure, self.plan.timeouts)
        result["findings"] = findings(result, slow_banner_ms=self.settings.slow_banner * 1000)
        result["finished_at"] = utc_timestamp()
        result["transcript"] = self.transcript.as_list()
        return result

    def _timed(self, name: str, started: float) -> None:
        self.timings[name] = round((time.monotonic() - started) * 1000, 1)

    # -- connecting ----------------------------------------------------------

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

    def _handshake(self, mode: str) -> dict[str, Any]:
        """TLS on this connection; the dialogue judges the facts."""
        plan = self.plan
        target = Target(plan.host, plan.port, tls_name=plan.tls_name)
        sni = target.server_hostname
        self.transcript.note(f"starting TLS handshake (SNI {sni or 'none'})")
        ssl_object = self.conn.start_tls(client_context(), sni)
        facts = session_facts(
            ssl_object, target.verify_name, self.settings.ca_file, extra_ca=plan.tls_ca
        )
        self.transcript.note(
            f"TLS established: {facts['version']} {facts['cipher']}; certificate "
            + ("verified" if facts["verified"] else f"NOT verified ({facts['verify_error']})")
            + ("" if target.verify_name else " (chain only: no name to check an IP against)")
        )
        return {**facts, "sni": sni}

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
        self._reverse = lookup = ReverseLookup(Resolver(self.settings, self.deadline), address)
        lookup.start()
        self.conn.sidecar = lookup  # carried on while the dialogue waits

    def _dns_facts(self) -> dict[str, Any] | None:
        if self.address is None:
            return None
        reverse = self._reverse
        if reverse is not None:
            left = min(self.deadline - time.monotonic(), self.settings.dns_timeout)
            reverse.finish(time.monotonic() + max(left, 0))  # not past a DELETE
            reverse.close()
            self._reverse_facts = reverse.facts or {}
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

        def connection() -> Connection:
            conn = Connection(
                self.transcript, command_timeout=plan.timeouts["command"], deadline=self.deadline
            )
            conn.open(address, plan.port, plan.timeouts["connect"])
            return conn

        def handshake_on(conn: Connection) -> Callable[[str], dict[str, Any]]:
            def handshake(mode: str) -> dict[str, Any]:
                sni = Target(plan.host, plan.port, tls_name=plan.tls_name).server_hostname
                conn.start_tls(client_context(), sni)
                return {"established": True}

            return handshake

        self.result["probes"] = run_probes(
            plan.probes,
            connection,
            handshake_on,
            helo=plan.helo,
            tls=plan.tls,
            implicit_tls=plan.implicit_tls,
            timings=self.timings,
            note=self.transcript.note,
            envelope=(plan.mail_from, plan.rcpt_to[0])
            if plan.mail_from is not None and plan.rcpt_to
            else None,
        )


def _first_word(text: str) -> str | None:
    words = text.split()
    return words[0].rstrip(".,") if words and "." in words[0] else None


def run_host_check(
    request: CheckRequest,
    settings: Settings,
    *,
    password: str | None = None,
    check_id: str | None = None,
    gate: Gate | None = None,
) -> dict[str, Any]:
    """Check the one host a normalized request names and return the result JSON
    (a mail domain, ``mx: true``, is workers.domain's, by way of workers.engine)."""
    plan = Plan.from_request(request, settings, password=password, check_id=check_id)
    log.info("check %s: %s:%s stop_after=%s", check_id, plan.host, plan.port, plan.stop_after)
    return Check(plan, settings, gate).run()
