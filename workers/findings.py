"""Findings: what a finished check says about the server, the way MXToolbox
shows Passed / Warnings / Failed. Derived from the result alone, so they
can be recomputed and tested without a network.

Each finding is ``{"severity": "pass"|"info"|"warning"|"fail", "code", "message"}``;
every code is documented in the README.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from smtpcheck.contract import SEVERITIES
from workers.protocol import printable

#: Certificate problems that are failures; the others are warnings.
CERTIFICATE_FAILURES = {"certificate_expired": "fail", "certificate_not_yet_valid": "fail"}


def sort_findings(found: list[dict[str, str]]) -> None:
    """Failures first, then warnings, infos and passes (stable within each)."""
    found.sort(key=lambda f: SEVERITIES.index(f["severity"]))


def _finding(severity: str, code: str, message: str) -> dict[str, str]:
    """One finding, its message on one line."""
    return {"severity": severity, "code": code, "message": " ".join(message.split())}


def findings(
    result: Mapping[str, Any],
    *,
    slow_banner_ms: float,
) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    add = out.append
    outcome = result.get("outcome")
    if outcome != "ok":
        add(_finding("fail", f"outcome_{outcome}", str(result.get("summary", ""))))

    banner = result.get("banner")
    timings = result.get("timings") or {}
    if banner and banner.get("class") == "accepted":
        first = printable(str(banner["text"]).split("\n")[0], 80)
        add(_finding("pass", "banner_ok", f"The server greets with {banner['code']} ({first})"))
        banner_ms = timings.get("banner")
        if banner_ms is not None and banner_ms > slow_banner_ms:
            add(
                _finding(
                    "warning",
                    "banner_slow",
                    f"The greeting took {banner_ms / 1000:.1f} s (over "
                    f"{slow_banner_ms / 1000:g} s): tarpitting, or an overloaded server",
                )
            )

    ehlo = result.get("ehlo") or {}
    tls = result.get("tls") or {}
    implicit = tls.get("mode") == "implicit"
    # What the server said in plain text: before STARTTLS, or all of it without TLS.
    plain = {} if implicit else ehlo.get("before_tls") or ({} if tls.get("established") else ehlo)
    if plain:
        if plain.get("starttls"):
            add(_finding("pass", "starttls_offered", "STARTTLS is offered"))
        else:
            add(
                _finding(
                    "warning",
                    "starttls_missing",
                    "STARTTLS is not offered: mail to this server travels unencrypted",
                )
            )
        if plain.get("auth"):
            mechanisms = " ".join(plain["auth"])
            add(
                _finding(
                    "warning",
                    "auth_before_tls",
                    f"AUTH ({mechanisms}) is offered before TLS: passwords may cross in clear",
                )
            )

    if tls.get("established"):
        out.extend(_tls_findings(tls))

    out.extend(_dns_findings(result.get("dns") or {}))
    out.extend(_probe_findings(result.get("probes") or {}))
    sort_findings(out)
    return out


def _tls_findings(tls: Mapping[str, Any]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    version = tls.get("version") or ""
    if version in ("TLSv1.2", "TLSv1.3"):
        out.append(_finding("pass", "tls_version_ok", f"TLS version {version}"))
    else:
        out.append(
            _finding("warning", "tls_version_old", f"TLS version {version} is below TLS 1.2")
        )
    if tls.get("verified"):
        out.append(_finding("pass", "certificate_trusted", "The certificate is trusted and valid"))
    # Every certificate problem is its own finding (workers.tls found them all).
    for problem in tls.get("problems") or []:
        severity = CERTIFICATE_FAILURES.get(problem["code"], "warning")
        out.append(_finding(severity, problem["code"], _sentence(problem["message"])))
    return out


def _sentence(text: str) -> str:
    return f"The {text}" if text.startswith("certificate ") else text[:1].upper() + text[1:]


def _dns_findings(dns: Mapping[str, Any]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    if not dns or dns.get("address") is None or dns.get("ptr_skipped"):
        return out
    address = dns["address"]
    if dns.get("ptr_error"):
        out.append(
            _finding(
                "warning",
                "ptr_lookup_failed",
                f"PTR lookup of {address} failed: {dns['ptr_error']}",
            )
        )
    elif not dns.get("ptr"):
        out.append(
            _finding(
                "warning",
                "ptr_missing",
                f"{address} has no PTR record: many receivers distrust mail from it",
            )
        )
    elif not dns.get("forward_confirmed"):
        out.append(
            _finding(
                "warning",
                "ptr_not_confirmed",
                f"The PTR of {address} ({', '.join(dns['ptr'])}) does not resolve back to it",
            )
        )
    else:
        out.append(
            _finding("pass", "ptr_ok", f"{address} has a forward-confirmed PTR ({dns['ptr'][0]})")
        )
    for source in ("banner", "ehlo"):
        host = dns.get(f"{source}_host")
        match = dns.get(f"{source}_matches_ptr")
        if host and dns.get("ptr") and match is False:
            out.append(
                _finding(
                    "info",
                    f"{source}_host_mismatch",
                    f"The {source.upper() if source == 'ehlo' else source} names {host}, "
                    f"not the PTR name {dns['ptr'][0]}",
                )
            )
    return out


def _probe_findings(probes: Mapping[str, Any]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    relay = (probes.get("open_relay") or {}).get("result")
    if relay == "open":
        out.append(
            _finding(
                "fail",
                "open_relay",
                "The server relays mail from an outside sender to an outside recipient: "
                "an open relay will be abused and blocklisted",
            )
        )
    elif relay == "closed":
        out.append(_finding("pass", "relay_closed", "The server refuses to relay for outsiders"))
    tls_req = (probes.get("starttls_required") or {}).get("result")
    if tls_req == "not_required":
        out.append(
            _finding("info", "starttls_not_required", "MAIL FROM is accepted before STARTTLS")
        )
    elif tls_req == "required":
        out.append(_finding("pass", "starttls_required", "MAIL FROM is refused until STARTTLS"))
    for verb in ("vrfy", "expn"):
        state = (probes.get(verb) or {}).get("result")
        if state == "enabled":
            out.append(
                _finding(
                    "warning",
                    f"{verb}_enabled",
                    f"{verb.upper()} is enabled: it lets anyone harvest addresses",
                )
            )
        elif state == "disabled":
            out.append(_finding("pass", f"{verb}_disabled", f"{verb.upper()} discloses nothing"))
    smuggling = probes.get("smuggling") or {}
    if smuggling.get("result") == "vulnerable":
        out.append(
            _finding(
                "fail",
                "smtp_smuggling",
                f"The server {smuggling['detail']}: SMTP smuggling (CVE-2023-51764 family) "
                "lets a sender hide a second, spoofed message inside the first. Fix: "
                "Postfix smtpd_forbid_bare_newline = normalize (3.9, 3.8.5, 3.7.10 and later), "
                "or your MTA's update for bare line ends",
            )
        )
    elif smuggling.get("result") == "not_vulnerable":
        out.append(
            _finding(
                "pass",
                "smtp_smuggling_not_vulnerable",
                f"Not vulnerable to SMTP smuggling: the server {smuggling['detail']}",
            )
        )
    return out
