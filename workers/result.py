"""The result's words: the reply the verdict rests on, and the one sentence
a person can act on, for every outcome and, where it says more, every
reply class. The verdict itself is workers.verdict's."""

from __future__ import annotations

import datetime as dt
from typing import Any

from smtpcheck.contract import Outcome, ReplyClass
from workers.dialogue import Failure
from workers.protocol import printable

O = Outcome  # noqa: E741
C = ReplyClass


def utc_timestamp() -> str:
    # isoformat: the same text as strftime("%Y-%m-%dT%H:%M:%S.%fZ"), at a fraction of its cost
    text = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
    return text.removesuffix("+00:00") + "Z"


def reply_of(failure: Failure | None) -> dict[str, Any] | None:
    """The reply that decided the outcome, with its class (``reply.class``)."""
    if failure is None or failure.reply is None:
        return None
    reply = failure.reply
    return {
        "code": reply.code,
        "enhanced": reply.enhanced,
        "text": reply.text,
        "class": str(failure.reply_class) if failure.reply_class else None,
    }


def _said(failure: Failure) -> str:
    reply = failure.reply
    if reply is None:
        return ""
    first = reply.lines[0] if reply.lines else ""
    return printable(f"{reply.code} {first}".strip(), 120)


def where_of(target: dict[str, Any]) -> str:
    """``host (address:port)``, IPv6 addresses in brackets."""
    address = target.get("address") or target["host"]
    port = target["port"]
    shown = f"[{address}]:{port}" if ":" in str(address) else f"{address}:{port}"
    if target.get("address") and target["host"] != target["address"]:
        shown = f"{target['host']} ({shown})"
    return shown


#: What a refusal of each class means for the person reading the summary,
#: where the outcome alone does not say it.
_CLASS_ADVICE: dict[ReplyClass, str] = {
    C.GREYLISTED: "greylisting: a real sender retries in a few minutes and gets through",
    C.RATE_LIMITED: "a rate limit on this client; retry later, more slowly",
    C.MAILBOX_FULL: "the mailbox exists but is full or over quota; its owner must make room",
    C.MAILBOX_DISABLED: "the mailbox exists but is disabled or cannot take mail now",
    C.BLOCKLISTED: "the checker's own address is on a blocklist the server uses; that is a "
    "fact about this vantage point, not about the server; try another vantage",
    C.CLIENT_HOST: "the server refuses this client by its address or reverse DNS; a fact "
    "about this vantage point, not about the server; try another vantage",
    C.SPF: "SPF/DMARC of the sender's domain does not allow mail from this vantage; use a "
    "sender address whose domain allows it, or none",
    C.SENDER: "the server refuses this sender address (its domain, syntax or policy); try "
    "another mail_from",
    C.POLICY: "a local policy or content filter refused it",
    C.TOO_MANY_RECIPIENTS: "too many recipients for one transaction",
    C.SIZE: "the message is larger than the server accepts",
    C.SMTPUTF8: "the server does not take non-ASCII addresses (no SMTPUTF8)",
    C.UNKNOWN_USER: "the mailbox does not exist there",
    C.BAD_ADDRESS: "the address is malformed or its domain is not handled there",
    C.RELAY: "correct unless it should accept mail for that domain; authenticate to relay",
}


def summarize(result: dict[str, Any], failure: Failure | None, timeouts: dict[str, float]) -> str:
    """One sentence: what happened and what it likely means."""
    target = result["target"]
    where = where_of(target)
    port = target["port"]
    if failure is None:
        return _success_summary(result, where)
    said = _said(failure)
    detail = printable(failure.detail, 160)
    subject = failure.subject
    advice = _CLASS_ADVICE.get(failure.reply_class) if failure.reply_class else None
    if failure.ours:
        return (
            f"smtpcheck could not go on during {failure.stage}: {detail}; this is a fault of "
            "the check request or of smtpcheck, not of the server"
        )
    outcome = failure.outcome
    if outcome is O.SERVICE_UNAVAILABLE:
        if failure.reply_class is C.CLOSING:
            when = "greeted with" if failure.stage == "banner" else f"during {failure.stage} said"
            return (
                f"{where} {when} {said} and closed the session: the server is overloaded, "
                "shutting down or limiting this client; retry later"
            )
        return (
            f"{where} greeted with {said}: the server refuses SMTP service to this client "
            "(a permanent refusal; often a policy against this vantage's network)"
        )
    if outcome is O.BANNER_TIMEOUT:
        hint = " (on port 465, try tls=implicit)" if port == 465 and not result.get("tls") else ""
        return (
            f"{where} accepted the connection but sent no greeting within "
            f"{timeouts['command']:g} s: the server may be overloaded, tarpitting, or not "
            f"speaking SMTP on this port{hint}"
        )
    sentences = {
        # The resolver's own words name the host already ("x does not resolve ...").
        O.DNS_ERROR: detail
        if detail.startswith(str(target["host"]))
        else f"{target['host']} cannot be resolved: {detail}",
        O.TARGET_FORBIDDEN: f"Refused to dial {target['host']}: {detail}; smtpcheck only "
        "checks public mail servers on the allowed ports",
        O.CONNECT_REFUSED: f"Connection to {where} was refused: nothing listens on port {port} "
        "there, or a firewall rejects the connection",
        O.CONNECT_TIMEOUT: f"Connection to {where} timed out after {timeouts['connect']:g} s: "
        f"a firewall or the ISP is likely dropping port {port}",
        O.NETWORK_UNREACHABLE: f"{where} is unreachable from this vantage point ({detail}): "
        "the worker's network has no route to it",
        O.CONNECTION_CLOSED: f"The server at {where} closed the connection during "
        f"{failure.stage}: {detail}",
        O.PROTOCOL_ERROR: f"The server at {where} broke the SMTP protocol during "
        f"{failure.stage}: {detail or said}",
        O.EHLO_REJECTED: f"The server refused both EHLO and HELO ({said}): it may not accept "
        f"the name {subject!r} or this client",
        O.STARTTLS_UNAVAILABLE: _starttls_sentence(where, failure, said),
        O.TLS_ERROR: f"TLS with {where} failed: {detail}",
        O.TLS_UNTRUSTED: f"The TLS certificate of {where} failed verification ({detail})",
        O.AUTH_UNAVAILABLE: f"{where} offers no usable AUTH mechanism ({detail or said}); many "
        "servers offer AUTH only after STARTTLS or on port 587",
        O.AUTH_FAILED: f"The server refused the credentials with {said}: wrong user name or "
        "password, or the account is not allowed this mechanism",
        O.TLS_REQUIRED: f"The server requires STARTTLS before {subject} ({said}): this is its "
        "policy, not a fault; check again with tls=starttls",
        O.AUTH_REQUIRED: f"The server requires authentication before {subject} ({said}): "
        "normal for a submission server; check again with auth",
        O.SMTPUTF8_UNAVAILABLE: f"<{subject}> is not plain ASCII and the server "
        f"{'refused it with ' + said if said else 'offers no SMTPUTF8'}: nothing was sent for "
        "it; use an ASCII address with that server",
        O.SENDER_REJECTED: f"The server rejected the sender <{subject}> with {said}",
        O.RELAY_DENIED: f"The server refuses to relay to <{subject}> ({said})",
        O.RECIPIENT_REJECTED: f"The server rejected the recipient <{subject}> with {said}",
        O.MAILBOX_UNAVAILABLE: f"The server cannot deliver to <{subject}> now ({said})",
        O.BLOCKED: f"The server refused this checker during {failure.stage} ({said})",
        O.POLICY_REJECTED: f"The server refused {_what(failure)} on policy ({said})",
        O.DATA_REJECTED: f"The server rejected the message with {said}",
        O.TIMEOUT: f"The check ran out of time during {failure.stage}: "
        + _timeout(failure, timeouts),
        O.CANCELED: f"The caller canceled the check while it was at {failure.stage}; what "
        "the server said until then is in the transcript",
    }
    sentence = sentences.get(outcome, f"{outcome} during {failure.stage}: {detail}")
    if outcome is O.TEMPORARY_FAILURE:
        why = advice or "greylisting, rate limiting or a full queue"
        return (
            f"The server deferred {_what(failure)} with {said}: a temporary failure ({why}); "
            "retry later"
        )
    return f"{sentence}: {advice}" if advice else sentence


def _timeout(failure: Failure, timeouts: dict[str, float]) -> str:
    if failure.deadline == "total":
        return f"no reply before the check's {timeouts['total']:g} s deadline"
    if failure.deadline == "command":
        return f"no complete reply within {timeouts['command']:g} s"
    return printable(failure.detail, 160)


def _what(failure: Failure) -> str:
    subject = failure.subject
    if failure.stage in ("mail", "rcpt") and subject and "@" in subject:
        return f"<{subject}>"
    return subject or failure.stage


def _starttls_sentence(where: str, failure: Failure, said: str) -> str:
    if failure.subject == "AUTH":
        return (
            f"{where} offers no TLS here, so the credentials were not sent: smtpcheck never "
            "sends them in plain text unless tls=none or auth.allow_plaintext is set"
        )
    if said:
        return (
            f"{where} refused STARTTLS with {said}: TLS is offered but not working now; "
            "mail to it travels unencrypted or waits"
        )
    return f"{where} does not offer STARTTLS, so mail to it travels unencrypted"


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
        tried = auth.get("attempts") or []
        after = f" after {tried[0]['mechanism']} was refused" if len(tried) > 1 else ""
        parts.append(f"AUTH {auth['mechanism']} accepted{after}")
    data = result.get("data") or {}
    if data.get("accepted"):
        queued = f" (queued as {data['queue_id']})" if data.get("queue_id") else ""
        parts.append(f"the test message was accepted{queued}")
    elif result.get("rcpt"):
        parts.append(f"{len(result['rcpt'])} recipient(s) accepted")
    elif result.get("mail"):
        parts.append("the sender was accepted")
    return ", ".join(parts) + f" (stopped after {result['stage']})"
