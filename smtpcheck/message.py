"""The test message sent after DATA, when the caller asked for one to be built.

Pure (no I/O), and shared: the worker builds the message with it, and the
API refuses any ``message`` it cannot build (a 422 naming the field) by
asking :func:`header_problem` and then building it once, so nothing the API
accepts can make a worker fail here.
"""

from __future__ import annotations

import email.policy
import email.utils
from email.message import EmailMessage

from smtpcheck.contract import DEFAULT_SUBJECT, MessageRequest

CHECK_ID_HEADER = "X-Smtpcheck-Id"
#: The builder writes these itself (one text/plain part); a caller's would be
#: dropped or, for a multipart type, make the message impossible to build.
OWN_HEADERS = ("content-", "mime-version")


def header_problem(name: str) -> str | None:
    """Why the builder cannot take a header of this name from the caller, or None."""
    if name.lower().startswith(OWN_HEADERS):
        return (
            f"{name} is written by the message builder (one text/plain part); "
            "send a whole message as data to choose the MIME structure"
        )
    return None


def build_message(
    spec: MessageRequest,
    *,
    mail_from: str | None,
    rcpt_to: list[str],
    helo: str,
    check_id: str | None,
) -> bytes:
    """An RFC 5322 message with Date, Message-ID, From, To, Subject and a
    header carrying the check id, so the message can be found at the far end.
    ``spec`` is complete, as the API normalized it (smtpcheck.contract)."""
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["Date"] = email.utils.formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = email.utils.make_msgid("smtpcheck", domain=helo)
    msg["From"] = mail_from or f"smtpcheck@{helo}"
    if rcpt_to:
        msg["To"] = ", ".join(rcpt_to)
    msg["Subject"] = spec["subject"] or DEFAULT_SUBJECT  # an empty one too
    if check_id:
        msg[CHECK_ID_HEADER] = check_id
    for name, value in spec["headers"].items():
        problem = header_problem(name)
        if problem is not None:
            raise ValueError(problem)
        if name.lower() in {k.lower() for k in msg}:
            msg.replace_header(name, value)
        else:
            msg[name] = value
    body = spec["body"]
    msg.set_content(body, charset="utf-8", cte="8bit" if not body.isascii() else "7bit")
    return msg.as_bytes()
