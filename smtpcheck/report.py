"""A check result as text, laid out like a terminal session.

The markers are swaks', which support staff already read: ``===`` the
checker's notes, ``<-`` the server, ``->`` the client, ``<~``/``~>`` the same
inside TLS, ``***`` errors. Each line starts with elapsed milliseconds. The
service's ``/v1/checks/{id}/transcript`` and ``smtpcheck check`` both use
``render_text``, so what a support engineer reads is the same everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from smtpcheck.contract import SEVERITIES

_MARKERS = {
    ("note", False): "===",
    ("note", True): "===",
    ("server", False): "<-",
    ("server", True): "<~",
    ("client", False): "->",
    ("client", True): "~>",
    ("error", False): "***",
    ("error", True): "***",
}


#: How each ``policy.dane.hosts[].status`` but ``valid`` reads, before its reason.
DANE_STATES = {
    "mismatch": "MISMATCH",
    "unverified": "not verified",
    "unusable": "no usable record",
    "lookup_failed": "LOOKUP FAILED",
    "unauthenticated": "not authenticated",
    "not_applicable": "not applicable",
}


def transcript_lines(entries: list[Mapping[str, Any]]) -> list[str]:
    lines = []
    for entry in entries:
        marker = _MARKERS.get((str(entry.get("dir")), bool(entry.get("tls"))), "   ")
        t_ms = float(entry.get("t_ms") or 0)
        for i, text in enumerate(str(entry.get("text", "")).split("\n")):
            stamp = f"{t_ms:>9.1f}ms" if i == 0 else " " * 11
            lines.append(f"{stamp} {marker} {text}".rstrip())
    return lines


def verdict_lines(result: Mapping[str, Any]) -> list[str]:
    ok = bool(result.get("ok"))
    target = result.get("target") or {}
    host = str(target.get("host", "?"))
    address = target.get("address")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal: [::1]:25, never ::1:25
    where = host
    if address and address != target.get("host"):
        where += f" [{address}]"
    if target.get("port"):
        where += f":{target['port']}"
    lines = [
        "",
        f"{'PASS' if ok else 'FAIL'}  {result.get('outcome', '?')} at stage "
        f"{result.get('stage', '?')}  ({where})",
        f"      {result.get('summary', '')}",
    ]
    tls = result.get("tls") or {}
    if tls.get("established"):
        cert = tls.get("certificate") or {}
        verified = "verified" if tls.get("verified") else f"NOT verified: {tls.get('verify_error')}"
        lines.append(f"TLS   {tls.get('version')} {tls.get('cipher')}, certificate {verified}")
        if cert:
            lines.append(
                f"      subject {cert.get('subject')}, issuer {cert.get('issuer')}, "
                f"valid until {cert.get('not_after')}"
            )
    auth = result.get("auth") or {}
    if auth.get("mechanism"):
        lines.append(
            f"AUTH  {auth['mechanism']} {'accepted' if auth.get('accepted') else 'refused'}"
        )
    timings = result.get("timings") or {}
    if timings:
        shown = ", ".join(f"{k} {v:.0f}ms" for k, v in timings.items() if v is not None)
        lines.append(f"TIME  {shown}")
    return lines


_SEVERITY_LABEL = {"fail": "FAIL", "warning": "WARN", "info": "INFO", "pass": "PASS"}


def mx_lines(result: Mapping[str, Any]) -> list[str]:
    mx = result.get("mx")
    if not mx:
        return []
    lines = ["", f"MX    {mx.get('domain')}: {len(mx.get('hosts') or [])} host(s)"]
    outcomes = {h["target"]["host"]: h for h in result.get("hosts") or []}
    for host in mx.get("hosts") or []:
        checked = outcomes.get(host["host"])
        state = f"{checked['outcome']}" if checked else "not checked"
        implicit = " (no MX: the domain itself)" if host.get("implicit") else ""
        lines.append(f"      {host['preference']:>5} {host['host']}{implicit}: {state}")
    return lines


def policy_lines(result: Mapping[str, Any]) -> list[str]:
    """What senders enforce for a domain (``policy``), one line each."""
    policy = result.get("policy")
    if not policy:
        return []
    sts = policy.get("mta_sts") or {}
    if sts.get("policy"):
        rules = sts["policy"]
        shown = (
            f"mode {rules['mode']}, mx {', '.join(rules['mx']) or '-'}, max_age {rules['max_age']}"
        )
    elif sts.get("record"):
        shown = f"record id {sts['record']['id']}, policy {sts.get('policy_error')}"
    else:
        shown = sts.get("record_error") or "none published"
    lines = ["", f"MTA-STS  {shown}"]
    rpt = (policy.get("tls_rpt") or {}).get("record")
    error = (policy.get("tls_rpt") or {}).get("error")
    lines.append(f"TLS-RPT  {', '.join(rpt['rua']) if rpt else error or 'none published'}")
    dane = policy.get("dane") or {}
    hosts = dane.get("hosts") or []
    if not hosts:
        shown = dane.get("error") or "no MX host reached"
        lines.append(f"DANE     {shown} (DNSSEC {dane.get('dnssec', 'off')})")
    for host in hosts:
        status, reason = host.get("status"), host.get("reason")
        if status == "valid":
            state = f"valid: TLSA {host['records'][host['matched']]['record']}"
        else:
            state = f"{DANE_STATES.get(status, 'not applicable')}: {reason}"
        lines.append(f"DANE     {host['host']}: {state}")
    return lines


def findings_lines(result: Mapping[str, Any]) -> list[str]:
    """The findings, failures first, as a short block."""
    found = list(result.get("findings") or [])
    if not found:
        return []
    found.sort(key=lambda f: SEVERITIES.index(f.get("severity", "info")))
    counts = {s: sum(1 for f in found if f.get("severity") == s) for s in SEVERITIES}
    lines = [
        "",
        "Findings: " + ", ".join(f"{counts[s]} {s}" for s in SEVERITIES if counts[s]),
    ]
    for finding in found:
        label = _SEVERITY_LABEL.get(finding.get("severity", ""), "????")
        lines.append(f"  [{label}] {finding.get('code')}: {finding.get('message')}")
    return lines


def render_text(result: Mapping[str, Any]) -> str:
    """The whole report: transcript, the verdict, MX hosts, the domain's
    transport security policy, then the findings."""
    lines = transcript_lines(list(result.get("transcript") or []))
    lines += verdict_lines(result)
    lines += mx_lines(result)
    lines += policy_lines(result)
    lines += findings_lines(result)
    return "\n".join(lines) + "\n"
