"""The test message sent after DATA, when the caller asked for one to be built."""

from __future__ import annotations

import email.policy
import email.utils
from collections.abc import Mapping
from email.message import EmailMessage
from typing import Any

DEFAULT_SUBJECT = "smtpcheck test message"
CHECK_ID_HEADER = "X-Smtpcheck-Id"


def build_message(
    spec: Mapping[str, Any] | None,
    *,
    mail_from: str | None,
    rcpt_to: list[str],
    helo: str,
    check_id: str | None,
) -> bytes:
    """An RFC 5322 message with Date, Message-ID, From, To, Subject and a
    header carrying the check id, so the message can be found at the far end."""
    spec = spec or {}
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["Date"] = email.utils.formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = email.utils.make_msgid("smtpcheck", domain=helo)
    msg["From"] = mail_from or f"smtpcheck@{helo}"
    if rcpt_to:
        msg["To"] = ", ".join(rcpt_to)
    msg["Subject"] = spec.get("subject") or DEFAULT_SUBJECT
    if check_id:
        msg[CHECK_ID_HEADER] = check_id
    for name, value in (spec.get("headers") or {}).items():
        if name.lower() in {k.lower() for k in msg}:
            msg.replace_header(name, value)
        else:
            msg[name] = value
    body = spec.get("body")
    if body is None:
        body = (
            "This is a test message sent by smtpcheck"
            + (f" (check {check_id})" if check_id else "")
            + ".\nIt can be deleted.\n"
        )
    msg.set_content(body, charset="utf-8", cte="8bit" if not body.isascii() else "7bit")
    return msg.as_bytes()
