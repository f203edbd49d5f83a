"""The check a request asks for, read once from the normalized request
(every field present, as the API made it) and the worker's settings."""

from __future__ import annotations

from dataclasses import dataclass

from smtpcheck.config import Settings
from smtpcheck.contract import (
    AUTH_DEFAULTS,
    STAGES,
    CheckRequest,
    Mechanism,
    MessageRequest,
    Probe,
    Stage,
    TLSMode,
)
from workers.protocol import check_wire_text


@dataclass
class Plan:
    """What one check runs, read from the normalized request as it is."""

    host: str
    port: int
    tls: TLSMode
    tls_verify: bool
    tls_name: str | None
    tls_ca: str | None
    helo: str
    username: str | None
    password: str | None
    mechanism: Mechanism
    allow_plaintext: bool
    mail_from: str | None
    rcpt_to: list[str]
    data: str | None
    message: MessageRequest | None
    timeouts: dict[str, float]
    ip_version: int | None
    check_id: str | None
    probes: list[Probe]
    stop_after: Stage = "connect"

    @classmethod
    def from_request(
        cls,
        request: CheckRequest,
        settings: Settings,
        *,
        password: str | None = None,
        check_id: str | None = None,
    ) -> Plan:
        """``request`` is complete, as the API's schema (or
        ``smtpcheck.contract.check_request``) made it: nothing here fills a
        default. What only the worker knows is decided here: a null ``helo``
        is this worker's configured name, a null ``stop_after`` the last stage
        the request implies; each deadline stays within this worker's caps."""
        auth = request["auth"]
        caps = settings.limits.max_timeouts
        timeouts = {
            key: float(min(request["timeouts"][key], getattr(caps, key)))
            for key in ("connect", "command", "total")
        }
        plan = cls(
            host=request["host"],
            port=request["port"],
            tls=request["tls"],
            tls_verify=request["tls_verify"],
            tls_name=request["tls_name"],
            tls_ca=request["tls_ca"],
            helo=request["helo"] or settings.helo_name,
            username=auth["username"] if auth else None,
            password=(password if password is not None else auth["password"]) if auth else None,
            mechanism=(auth or AUTH_DEFAULTS)["mechanism"],
            allow_plaintext=(auth or AUTH_DEFAULTS)["allow_plaintext"],
            mail_from=request["mail_from"],
            rcpt_to=list(request["rcpt_to"]),
            data=request["data"],
            message=request["message"],
            timeouts=timeouts,
            ip_version=request["ip_version"],
            check_id=check_id,
            probes=list(request["probes"]),
        )
        plan.stop_after = request["stop_after"] or plan.implied_stop()
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

    def implied_stop(self) -> Stage:
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
