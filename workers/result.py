"""The verdict: outcome codes, how server replies map to them, and the one
sentence a person can act on."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from workers.protocol import Reply

_RELAY = re.compile(r"relay|relaying|not permitted to relay|not local|no such domain here", re.I)
_TLS_WORDS = re.compile(r"starttls|\btls\b|encrypt|secure connection|ssl", re.I)


def policy_outcome(reply: Reply) -> str | None:
    """``tls_required`` or ``auth_required`` for a 530-style policy reply."""
    enhanced = reply.enhanced or ""
    if reply.code in (530, 538) or enhanced in ("5.7.0", "5.7.11", "5.7.10"):
        if reply.code == 538 or enhanced == "5.7.11" or _TLS_WORDS.search(reply.text):
            return "tls_required"
        if reply.code == 530 or re.search(r"auth", reply.text, re.I):
            return "auth_required"
    return None


def rejection_outcome(stage: str, reply: Reply) -> str:
    """The outcome of a refusal at ``stage`` (``mail``, ``rcpt`` or ``data``)."""
    if reply.transient:
        return "temporary_failure"
    policy = policy_outcome(reply)
    if policy:
        return policy
    if stage == "mail":
        return "sender_rejected"
    if stage == "rcpt":
        if reply.enhanced == "5.7.1" or _RELAY.search(reply.text):
            return "relay_denied"
        return "recipient_rejected"
    return "data_rejected"


@dataclass
class Failure:
    """What stopped the check, kept for the summary."""

    outcome: str
    stage: str
    detail: str = ""
    reply: Reply | None = None
    subject: str = ""  # the address or command concerned


def _reply_text(reply: Reply | None) -> str:
    if reply is None:
        return ""
    return f"{reply.code} {reply.lines[0]}".strip() if reply.lines else str(reply.code)


def summarize(result: dict[str, Any], failure: Failure | None, timeouts: dict[str, float]) -> str:
    """One sentence: what happened and what it likely means."""
    target = result["target"]
    address = target.get("address") or target["host"]
    port = target["port"]
    where = f"{address}:{port}" if ":" not in str(address) else f"[{address}]:{port}"
    if target.get("address") and target["host"] != target["address"]:
        where = f"{target['host']} ({where})"
    if failure is None:
        return _success_summary(result, where)
    said = _reply_text(failure.reply)
    detail = failure.detail
    outcome = failure.outcome
    sentences = {
        "dns_error": f"{target['host']} cannot be resolved: {detail}",
        "target_forbidden": f"Refused to dial {target['host']}: {detail}; smtpcheck only "
        "checks public mail servers on the allowed ports",
        "connect_refused": f"Connection to {where} was refused: nothing listens on port {port} "
        "there, or a firewall rejects the connection",
        "connect_timeout": f"Connection to {where} timed out after {timeouts['connect']:g} s: "
        f"a firewall or the ISP is likely dropping port {port}",
        "network_unreachable": f"{where} is unreachable from this vantage point ({detail}): "
        "the worker's network has no route to it",
        "banner_timeout": f"{where} accepted the connection but sent no greeting within "
        f"{timeouts['command']:g} s: the server may be overloaded, tarpitting, or not speaking "
        "SMTP on this port (on 465, try tls=implicit)",
        "service_unavailable": f"{where} greeted with {said}: the server refuses service to "
        "this client for now (often overload or a blocklist listing the worker's address)",
        "connection_closed": f"The server at {where} closed the connection during "
        f"{failure.stage}: {detail}",
        "protocol_error": f"The server at {where} broke the SMTP protocol during "
        f"{failure.stage}: {detail}",
        "ehlo_rejected": f"The server refused both EHLO and HELO ({said}): it may not accept "
        f"the name {failure.subject!r} or this client",
        "starttls_unavailable": f"{where} does not offer STARTTLS, so mail to it travels "
        "unencrypted",
        "tls_error": f"TLS with {where} failed: {detail}",
        "tls_untrusted": f"The TLS certificate of {where} is not trusted: {detail}",
        "auth_unavailable": f"{where} offers no usable AUTH mechanism ({detail}); many servers "
        "offer AUTH only after STARTTLS or on port 587",
        "auth_failed": f"The server refused the credentials with {said}: wrong user name or "
        "password, or the account is not allowed this mechanism",
        "tls_required": f"The server requires STARTTLS before {failure.subject} ({said}): "
        "this is its policy, not a fault; check again with tls=starttls",
        "auth_required": f"The server requires authentication before {failure.subject} "
        f"({said}): normal for a submission server; check again with auth",
        "sender_rejected": f"The server rejected the sender <{failure.subject}> with {said}",
        "relay_denied": f"The server refuses to relay to <{failure.subject}> ({said}): correct "
        "unless it should accept mail for that domain; authenticate to relay",
        "recipient_rejected": f"The server rejected the recipient <{failure.subject}> with "
        f"{said}: the mailbox likely does not exist there",
        "temporary_failure": f"The server deferred {failure.subject} with {said}: a temporary "
        "failure (greylisting, rate limiting or a full queue); retry later",
        "data_rejected": f"The server rejected the message with {said}",
        "timeout": f"The check ran out of time during {failure.stage}: {detail}",
    }
    return sentences.get(outcome, f"{outcome} during {failure.stage}: {detail}")


def _success_summary(result: dict[str, Any], where: str) -> str:
    parts = [f"{where} answered"]
    banner = result.get("banner")
    if banner:
        parts[0] += f" with {banner['code']}"
    tls = result.get("tls") or {}
    if tls.get("established"):
        trust = "trusted" if tls.get("verified") else "NOT trusted"
        parts.append(f"{tls.get('version')} (certificate {trust})")
    elif tls.get("offered") is False:
        parts.append("no STARTTLS offered")
    auth = result.get("auth") or {}
    if auth.get("accepted"):
        parts.append(f"AUTH {auth['mechanism']} accepted")
    if result.get("data") and result["data"].get("accepted"):
        parts.append("the test message was accepted")
    elif result.get("rcpt"):
        parts.append(f"{len(result['rcpt'])} recipient(s) accepted")
    elif result.get("mail"):
        parts.append("the sender was accepted")
    return ", ".join(parts) + f" (stopped after {result['stage']})"
