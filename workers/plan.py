"""The check a request asks for: the validated request with every default
applied, read once from the request and the worker's settings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from smtpcheck.config import Settings
from smtpcheck.contract import PROBES, STAGES
from workers.protocol import check_wire_text


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
    allow_plaintext: bool = False
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
            allow_plaintext=bool(auth.get("allow_plaintext")) if auth else False,
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
