"""What a sending MTA would enforce for a mail domain (``policy`` in the
result of an ``mx: true`` check): MTA-STS (RFC 8461), TLS-RPT (RFC 8460)
and DANE (RFC 7672), judged against the MX hosts the check just talked to.

The DNS and HTTPS traffic has its own deadline (:data:`POLICY_SECONDS`)
inside the check's; the HTTPS fetch goes through the same address policy
as a mail server (:mod:`workers.https`). The parsing and matching rules
live in :mod:`workers.mtasts`, :mod:`workers.tlsrpt`, :mod:`workers.dane`
and :mod:`workers.dnssec`; this module asks the questions and words the
findings.
"""

from __future__ import annotations

import http.client
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.rdatatype

from smtpcheck.config import Settings
from smtpcheck.targetpolicy import HTTPTarget
from workers import dane, dnssec, mtasts, tlsrpt
from workers.errors import DNSError
from workers.https import Refused, exchange
from workers.resolver import Resolver
from workers.tls import WARNINGS_ONLY

#: The policy checks' own time, inside the check's total deadline.
POLICY_SECONDS = 15.0
FETCH_SECONDS = 10.0

Finding = dict[str, str]


def _finding(severity: str, code: str, message: str) -> Finding:
    return {"severity": severity, "code": code, "message": message}


def assess(
    domain: str,
    mx_hosts: Sequence[str],
    checked: Sequence[Mapping[str, Any]],
    settings: Settings,
    deadline: float,
    *,
    port: int = 25,
    note: Callable[[str], None] = lambda text: None,
) -> tuple[dict[str, Any], list[Finding]]:
    """The ``policy`` section and its findings.

    ``mx_hosts`` are every MX host name of the domain, ``checked`` the
    per-host results of those the dialogue reached (their ``tls`` facts
    carry the certificate chain). ``note`` writes the checker's notes into
    the transcript: what was looked up and fetched, and what came back."""
    deadline = min(deadline, time.monotonic() + POLICY_SECONDS)
    resolver = Resolver(settings, deadline)
    findings: list[Finding] = []
    by_host = {str(r["target"]["host"]).lower().rstrip("."): r for r in checked}
    sts = _mta_sts(domain, mx_hosts, by_host, resolver, settings, deadline, findings, note)
    rpt = _tls_rpt(domain, resolver, findings, note)
    danes = _dane(mx_hosts, by_host, resolver, settings, port, findings, note)
    _implied(sts, danes, by_host, findings)
    return {"mta_sts": sts, "tls_rpt": rpt, "dane": danes}, findings


# -- MTA-STS -------------------------------------------------------------------


def _mta_sts(
    domain: str,
    mx_hosts: Sequence[str],
    by_host: Mapping[str, Mapping[str, Any]],
    resolver: Resolver,
    settings: Settings,
    deadline: float,
    findings: list[Finding],
    note: Callable[[str], None],
) -> dict[str, Any]:
    add = findings.append
    facts: dict[str, Any] = {
        "record": None,
        "record_error": None,
        "policy_url": None,
        "policy": None,
        "policy_error": None,
        "hosts": [],
    }
    name = f"_mta-sts.{domain}"
    try:
        texts = resolver.txt(name)
    except DNSError as exc:
        note(f"{name} TXT: {exc}")
        facts["record_error"] = str(exc)
        add(
            _finding(
                "warning", "mta_sts_record_invalid", f"MTA-STS: the lookup of {name} failed: {exc}"
            )
        )
        return facts
    note(f"{name} TXT: " + (" | ".join(texts) if texts else "no record"))
    if not any(mtasts.is_record(t, "STSv1") for t in texts):
        add(
            _finding(
                "info",
                "mta_sts_record_missing",
                f"MTA-STS: {domain} publishes no policy ({name} has no v=STSv1 record)",
            )
        )
        return facts
    try:
        record = mtasts.sts_record(texts)
    except mtasts.PolicyError as exc:
        facts["record_error"] = str(exc)
        add(
            _finding(
                "fail", "mta_sts_record_invalid", f"MTA-STS: the record at {name} is invalid: {exc}"
            )
        )
        return facts
    facts["record"] = {"id": record.id}
    policy_host = f"mta-sts.{domain}"
    target = HTTPTarget("https", policy_host, settings.mta_sts_port, mtasts.POLICY_PATH)
    facts["policy_url"] = target.url
    policy, error, code = _fetch_policy(
        target, settings, min(deadline, time.monotonic() + FETCH_SECONDS)
    )
    note(
        f"GET {target.url}: "
        + (f"mode {policy.mode}, mx {', '.join(policy.mx)}" if policy else error)
    )
    if policy is None:
        facts["policy_error"] = error
        add(_finding("fail", code, f"MTA-STS: the policy at {target.url} {error}"))
        return facts
    facts["policy"] = policy.as_dict()
    if policy.mode == "testing":
        add(
            _finding(
                "warning",
                "mta_sts_mode_testing",
                "MTA-STS: the policy is in testing mode: senders report failures but still "
                "deliver over a failed or missing TLS",
            )
        )
    elif policy.mode == "none":
        add(
            _finding(
                "info",
                "mta_sts_mode_none",
                "MTA-STS: the policy's mode is none: the domain has withdrawn its policy",
            )
        )
        return facts
    failures = 0
    severity = "fail" if policy.mode == "enforce" else "warning"
    for host in mx_hosts:
        key = host.lower().rstrip(".")
        pattern = mtasts.covering_pattern(policy, key)
        entry: dict[str, Any] = {
            "host": host,
            "pattern": pattern,
            "covered": pattern is not None,
            "certificate_ok": None,
            "reason": None,
        }
        if pattern is None:
            failures += 1
            entry["reason"] = "no mx pattern of the policy covers this host"
            add(
                _finding(
                    severity,
                    "mta_sts_mx_not_covered",
                    f"MTA-STS: MX {host} is not covered by the policy's mx patterns "
                    f"({', '.join(policy.mx)}): senders enforcing it will not deliver to it",
                )
            )
        result = by_host.get(key)
        if result is not None:
            ok, reason = _sts_certificate(result)
            entry["certificate_ok"], entry["reason"] = ok, entry["reason"] or reason
            if not ok:
                failures += 1
                add(
                    _finding(
                        severity,
                        "mta_sts_certificate_invalid",
                        f"MTA-STS: MX {host} would fail under enforce: {reason}",
                    )
                )
        facts["hosts"].append(entry)
    if not failures and policy.mode == "enforce":
        add(
            _finding(
                "pass",
                "mta_sts_valid",
                f"MTA-STS: an enforced policy (max_age {policy.max_age} s) covers every MX "
                "host, and the ones checked present valid certificates",
            )
        )
    return facts


def _fetch_policy(
    target: HTTPTarget, settings: Settings, deadline: float
) -> tuple[mtasts.Policy | None, str, str]:
    """The parsed policy, or None with the reason and the finding code."""
    unreachable = "mta_sts_policy_unreachable"
    try:
        response = exchange(
            target,
            settings,
            deadline,
            headers={"User-Agent": "smtpcheck-mta-sts/1"},
            max_bytes=mtasts.MAX_POLICY_BYTES,
        )
    except Refused as exc:
        return None, f"was not fetched: {exc}", unreachable
    except DNSError as exc:
        return None, f"is unreachable: {exc}", unreachable
    except ssl.SSLError as exc:
        reason = getattr(exc, "verify_message", None) or exc.reason or str(exc)
        return (
            None,
            f"is unreachable: its certificate does not verify for {target.host} ({reason})",
            unreachable,
        )
    except TimeoutError:
        return None, f"is unreachable: no answer within {FETCH_SECONDS:g} s", unreachable
    except (OSError, http.client.HTTPException) as exc:
        return (
            None,
            f"is unreachable: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}",
            unreachable,
        )
    if 300 <= response.status < 400:
        where = f" to {response.location}" if response.location else ""
        return (
            None,
            f"answered with a redirect{where} (HTTP {response.status}); "
            "RFC 8461 forbids following it",
            "mta_sts_policy_invalid",
        )
    if response.status != 200:
        return None, f"answered HTTP {response.status}", unreachable
    if response.truncated:
        return (
            None,
            f"is larger than {mtasts.MAX_POLICY_BYTES // 1024} KiB",
            "mta_sts_policy_invalid",
        )
    media = (response.content_type or "").split(";")[0].strip().lower()
    if media != "text/plain":
        return (
            None,
            f"is served as {media or 'no media type'}, not text/plain (RFC 8461 3.2)",
            "mta_sts_policy_invalid",
        )
    try:
        return mtasts.parse_policy(response.body), "", ""
    except mtasts.PolicyError as exc:
        return None, f"is invalid: {exc}", "mta_sts_policy_invalid"


def _sts_certificate(result: Mapping[str, Any]) -> tuple[bool, str | None]:
    """MTA-STS needs TLS with a certificate valid for the MX host name."""
    tls = result.get("tls") or {}
    if not tls.get("established"):
        return False, "no TLS session with it (MTA-STS requires STARTTLS)"
    host = str(result["target"]["host"])
    blocking = [
        p["message"] for p in tls.get("problems") or [] if p.get("code") not in WARNINGS_ONLY
    ]
    checked_for = tls.get("verify_name")
    if checked_for is not None and str(checked_for).lower() != host.lower():
        return False, f"its certificate was checked for {checked_for}, not {host}"
    if blocking:
        return False, "; ".join(blocking)
    return True, None


# -- TLS-RPT -------------------------------------------------------------------


def _tls_rpt(
    domain: str, resolver: Resolver, findings: list[Finding], note: Callable[[str], None]
) -> dict[str, Any]:
    name = f"_smtp._tls.{domain}"
    facts: dict[str, Any] = {"record": None, "error": None}
    try:
        texts = resolver.txt(name)
    except DNSError as exc:
        note(f"{name} TXT: {exc}")
        facts["error"] = str(exc)
        findings.append(
            _finding("warning", "tls_rpt_invalid", f"TLS-RPT: the lookup of {name} failed: {exc}")
        )
        return facts
    note(f"{name} TXT: " + (" | ".join(texts) if texts else "no record"))
    if not any(mtasts.is_record(t, "TLSRPTv1") for t in texts):
        findings.append(
            _finding(
                "info",
                "tls_rpt_missing",
                f"TLS-RPT: {domain} asks for no TLS failure reports "
                f"({name} has no v=TLSRPTv1 record)",
            )
        )
        return facts
    try:
        record = tlsrpt.reporting_record(texts)
    except tlsrpt.ReportingError as exc:
        facts["error"] = str(exc)
        findings.append(
            _finding(
                "warning", "tls_rpt_invalid", f"TLS-RPT: the record at {name} is invalid: {exc}"
            )
        )
        return facts
    facts["record"] = record.as_dict()
    findings.append(
        _finding("pass", "tls_rpt_valid", f"TLS-RPT: failure reports go to {', '.join(record.rua)}")
    )
    return facts


# -- DANE ----------------------------------------------------------------------


def _dane(
    mx_hosts: Sequence[str],
    by_host: Mapping[str, Mapping[str, Any]],
    resolver: Resolver,
    settings: Settings,
    port: int,
    findings: list[Finding],
    note: Callable[[str], None],
) -> dict[str, Any]:
    facts: dict[str, Any] = {"dnssec": settings.dnssec, "hosts": []}
    validator = None
    if settings.dnssec == "validate":
        try:
            anchors = dnssec.Anchors.load(settings.dnssec_anchors)
        except (OSError, ValueError) as exc:
            facts["error"] = f"the trust anchors cannot be read: {exc}"
            findings.append(_finding("warning", "dane_unauthenticated", f"DANE: {facts['error']}"))
            return facts
        validator = dnssec.Validator(
            lambda name, rdtype: resolver.secure(name, dns.rdatatype.to_text(rdtype)), anchors
        )
    for host in mx_hosts:
        key = host.lower().rstrip(".")
        result = by_host.get(key)
        if result is None:
            continue  # not reached by the dialogue: no certificate to judge
        entry = _dane_host(host, result, resolver, settings, validator, port)
        if entry is None:
            note(f"_{port}._tcp.{host} TLSA: no record (no DANE)")
            continue  # no TLSA records: no DANE, no finding
        shown = "authenticated" if entry["authenticated"] else f"not trusted: {entry['reason']}"
        note(f"{entry['name']} TLSA: {len(entry['tlsa'] or [])} record(s), {shown}")
        facts["hosts"].append(entry)
        if not entry["authenticated"]:
            findings.append(
                _finding(
                    "warning",
                    "dane_unauthenticated",
                    f"DANE: {host} has TLSA records, but {entry['reason']}",
                )
            )
        elif entry["matched"] is not None:
            winner = entry["records"][entry["matched"]]
            findings.append(
                _finding(
                    "pass",
                    "dane_valid",
                    f"DANE: {host}: {winner['reason']} (TLSA {winner['record']})",
                )
            )
        else:
            findings.append(
                _finding(
                    "fail",
                    "dane_mismatch",
                    f"DANE: {host}: no TLSA record matches: {entry['reason']}",
                )
            )
    return facts


def _dane_host(
    host: str,
    result: Mapping[str, Any],
    resolver: Resolver,
    settings: Settings,
    validator: dnssec.Validator | None,
    port: int,
) -> dict[str, Any] | None:
    name = f"_{port}._tcp.{host.rstrip('.')}."
    entry: dict[str, Any] = {
        "host": host,
        "name": name.rstrip("."),
        "authenticated": False,
        "reason": None,
        "tlsa": [],
        "matched": None,
        "records": [],
    }
    try:
        response = resolver.secure(name, "TLSA")
    except DNSError as exc:
        entry["reason"] = f"the TLSA lookup failed: {exc}"
        entry["tlsa"] = None
        return entry
    if response is None:
        return None
    records = [
        dane.TLSARecord(r.usage, r.selector, r.mtype, bytes(r.cert))
        for rrset in response.answer
        if rrset.rdtype == dns.rdatatype.TLSA
        for r in rrset
    ]
    if not records:
        return None
    entry["tlsa"] = [r.text() for r in records]
    verdict = _authenticity(response, settings, validator)
    entry["authenticated"], entry["reason"] = verdict.authenticated, verdict.reason
    if not verdict.authenticated:
        return entry
    tls = result.get("tls") or {}
    if not tls.get("established"):
        entry["reason"] = "the server offered no TLS, which DANE requires"
        entry["records"] = [
            {
                "record": r.text(),
                "usage": dane.USAGES.get(r.usage),
                "matched": False,
                "reason": "no TLS session",
            }
            for r in records
        ]
        return entry
    judged = dane.match(records, tls.get("chain") or [], tls.get("certificate"), [host.rstrip(".")])
    entry.update(judged)
    if judged["matched"] is None:
        entry["reason"] = "; ".join(sorted({r["reason"] for r in judged["records"]}))
    return entry


def _authenticity(
    response: dns.message.Message, settings: Settings, validator: dnssec.Validator | None
) -> dnssec.Verdict:
    if settings.dnssec == "off":
        return dnssec.Verdict(
            False,
            "this worker does not validate DNSSEC (SMTPCHECK_DNSSEC=off), "
            "so the records cannot be trusted",
        )
    if settings.dnssec == "trust-ad":
        if response.flags & dns.flags.AD:
            return dnssec.Verdict(True, "the validating resolver set the AD bit")
        return dnssec.Verdict(
            False, "the answer is not DNSSEC-authenticated (the resolver did not set the AD bit)"
        )
    assert validator is not None
    try:
        validator.answer(response)
    except dnssec.Bogus as exc:
        return dnssec.Verdict(False, f"the answer does not validate: {exc}")
    except DNSError as exc:
        return dnssec.Verdict(False, f"the chain of trust could not be fetched: {exc}")
    return dnssec.Verdict(True, "validated from the trust anchor")


# -- what a policy implies of the MX ------------------------------------------


def _implied(
    sts: Mapping[str, Any],
    danes: Mapping[str, Any],
    by_host: Mapping[str, Mapping[str, Any]],
    findings: list[Finding],
) -> None:
    enforced = (sts.get("policy") or {}).get("mode") == "enforce"
    dane_hosts = {
        h["host"].lower().rstrip(".") for h in danes.get("hosts", []) if h.get("authenticated")
    }
    for key, result in by_host.items():
        if not (enforced or key in dane_hosts):
            continue
        by = " and ".join(n for n, on in (("MTA-STS", enforced), ("DANE", key in dane_hosts)) if on)
        ehlo = result.get("ehlo") or {}
        plain = (ehlo.get("before_tls") or ehlo).get("extensions") or {}
        offered = ehlo.get("extensions") or {}
        host = result["target"]["host"]
        tls = result.get("tls") or {}
        if (
            tls.get("mode") != "implicit"
            and not plain.get("STARTTLS")
            and not tls.get("established")
        ):
            findings.append(
                _finding(
                    "fail",
                    "policy_mx_no_starttls",
                    f"{host}: the domain enforces TLS ({by}) but this MX does not offer "
                    "STARTTLS: enforcing senders cannot deliver",
                )
            )
        if tls.get("established") and not offered.get("REQUIRETLS"):
            findings.append(
                _finding(
                    "info",
                    "requiretls_not_offered",
                    f"{host}: the domain enforces TLS ({by}) but this MX does not offer "
                    "REQUIRETLS (RFC 8689), so senders cannot ask for TLS on every later hop",
                )
            )
