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

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rdatatype

from smtpcheck.config import Settings
from smtpcheck.targetpolicy import HTTPTarget
from workers import dane, dnssec, mtasts, tlsrpt
from workers.errors import DNSError
from workers.https import Refused, exchange
from workers.resolver import Resolver, ip_literal
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
    danes = _dane(domain, mx_hosts, by_host, resolver, settings, port, findings, note)
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
    failures = unseen = 0
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
        unjudged = _no_certificate(result) if result is not None else None
        if unjudged is not None:
            entry["reason"] = entry["reason"] or unjudged
            unseen += 1
        elif result is not None:
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
        seen = (
            "the ones checked present valid certificates"
            if unseen < len(by_host)
            else "no certificate was judged (the check ended before TLS)"
        )
        add(
            _finding(
                "pass",
                "mta_sts_valid",
                f"MTA-STS: an enforced policy (max_age {policy.max_age} s) covers every MX "
                f"host, and {seen}",
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


def _no_certificate(result: Mapping[str, Any]) -> str | None:
    """Why the check holds no certificate of this host where that is the
    check's own doing (it ended, or was asked to stop, before TLS); None
    when the server itself offered no TLS, or its TLS failed."""
    tls = result.get("tls") or {}
    if tls.get("established"):
        return None
    ehlo = result.get("ehlo") or {}
    plain = (ehlo.get("before_tls") or ehlo).get("extensions") or {}
    where = f"the check ended at stage {result.get('stage')} ({result.get('outcome')})"
    if tls.get("offered") or plain.get("STARTTLS") or tls.get("mode") == "implicit":
        if result.get("outcome") in ("tls_error", "starttls_unavailable"):
            return None  # TLS was tried and the server failed it
        return f"{where} without TLS, so its certificate was not judged"
    if not ehlo:
        return f"{where} before EHLO, so its TLS and certificate were not judged"
    return None


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


class _Judge:
    """DNS answers put in RFC 7672 2.1.1's states, as SMTPCHECK_DNSSEC says."""

    def __init__(
        self, settings: Settings, resolver: Resolver, validator: dnssec.Validator | None
    ) -> None:
        self.mode = settings.dnssec
        self.resolver = resolver
        self.validator = validator

    def lookup(self, name: str, rdtype: str) -> tuple[dns.message.Message | None, dnssec.Verdict]:
        """The response to a DO query and its state; a failed lookup is
        bogus (RFC 7672 2.1.1: a SERVFAIL is treated like one)."""
        try:
            response = self.resolver.secure(_absolute(name), rdtype, denials=True)
        except DNSError as exc:
            return None, dnssec.Verdict(dnssec.BOGUS, f"the {rdtype} lookup failed: {exc}")
        if response is None:
            return None, dnssec.Verdict(dnssec.BOGUS, f"the {rdtype} lookup got no answer")
        return response, self.verdict(name, rdtype, response)

    def verdict(self, name: str, rdtype: str, response: dns.message.Message) -> dnssec.Verdict:
        if self.mode == "trust-ad":
            if response.flags & dns.flags.AD:
                return dnssec.Verdict(dnssec.SECURE, "the validating resolver set the AD bit")
            return dnssec.Verdict(
                dnssec.INSECURE, "the resolver did not set the AD bit: not DNSSEC-authenticated"
            )
        assert self.validator is not None
        try:
            return self.validator.judge(
                dns.name.from_text(_absolute(name)), dns.rdatatype.from_text(rdtype), response
            )
        except DNSError as exc:
            return dnssec.Verdict(dnssec.BOGUS, f"the chain of trust could not be fetched: {exc}")
        except dns.exception.DNSException as exc:  # a record dnspython cannot take
            return dnssec.Verdict(dnssec.BOGUS, f"the answer cannot be validated: {exc}")


def _absolute(name: str) -> str:
    return name.rstrip(".") + "."


def _cname_target(response: dns.message.Message | None, name: str) -> str:
    """Where the CNAME chain in ``response`` leads from ``name`` (itself when none)."""
    target = dns.name.from_text(_absolute(name))
    for rrset in response.answer if response is not None else ():
        if rrset.rdtype == dns.rdatatype.CNAME and rrset.name == target:
            target = rrset[0].target
    return target.to_text().rstrip(".")


def _tlsa_records(response: dns.message.Message | None) -> list[dane.TLSARecord]:
    return [
        dane.TLSARecord(r.usage, r.selector, r.mtype, bytes(r.cert))
        for rrset in (response.answer if response is not None else ())
        if rrset.rdtype == dns.rdatatype.TLSA
        for r in rrset
    ]


def _dane(
    domain: str,
    mx_hosts: Sequence[str],
    by_host: Mapping[str, Mapping[str, Any]],
    resolver: Resolver,
    settings: Settings,
    port: int,
    findings: list[Finding],
    note: Callable[[str], None],
) -> dict[str, Any]:
    """RFC 7672 2.2: DANE applies to an MX host only when the MX RRset, the
    host's address records and its TLSA records are all DNSSEC-secure; an
    insecure link means DANE does not apply, a bogus one (or a failed
    lookup) that senders using DANE cannot deliver to the host for now."""
    facts: dict[str, Any] = {"dnssec": settings.dnssec, "mx_security": None, "hosts": []}
    validator = None
    if settings.dnssec == "validate":
        try:
            anchors = dnssec.Anchors.load(settings.dnssec_anchors)
        except (OSError, ValueError) as exc:
            facts["error"] = f"the trust anchors cannot be read: {exc}"
            findings.append(_finding("warning", "dane_unauthenticated", f"DANE: {facts['error']}"))
            return facts
        validator = dnssec.Validator(
            lambda name, rdtype: resolver.secure(name, dns.rdatatype.to_text(rdtype), denials=True),
            anchors,
        )
    reached = [h for h in mx_hosts if h.lower().rstrip(".") in by_host]
    if settings.dnssec != "off" and reached:
        trouble = (
            _anchor_trouble(validator, domain)
            if validator is not None
            else _resolver_trouble(resolver)
        )
        if trouble is not None:  # the checker's fault, never the domain's
            facts["error"] = trouble
            findings.append(_finding("warning", "dane_unauthenticated", f"DANE: {trouble}"))
            return facts
    judge = _Judge(settings, resolver, validator)
    mx_problem: tuple[str, str] | None = None  # (status, reason) for every host
    if settings.dnssec != "off" and reached:
        response, mx = judge.lookup(domain, "MX")
        implicit = response is not None and not any(
            r.rdtype == dns.rdatatype.MX for r in response.answer
        )
        if not implicit:  # RFC 7672 2.2.2: a domain with no MX is its own host
            facts["mx_security"] = mx.state
            note(f"{domain} MX: DNSSEC {mx.state} ({mx.reason})")
        if mx.state == dnssec.BOGUS and not implicit:
            mx_problem = (
                "lookup_failed",
                f"the MX RRset of {domain} does not validate: {mx.reason}",
            )
            findings.append(
                _finding(
                    "fail",
                    "dane_lookup_failed",
                    f"DANE: {mx_problem[1]}; senders that use DANE defer mail to {domain} "
                    "(RFC 7672 2.2.1)",
                )
            )
        elif mx.state == dnssec.INSECURE and not implicit:
            mx_problem = (
                "not_applicable",
                f"the MX RRset of {domain} is not DNSSEC-signed ({mx.reason}), so senders "
                "do not use DANE for its hosts (RFC 7672 2.2.1)",
            )
    for host in reached:
        result = by_host[host.lower().rstrip(".")]
        entry = _dane_host(host, result, judge, settings, port, mx_problem)
        facts["hosts"].append(entry)
        note(f"{entry['name'] or host} TLSA: DANE {entry['status']}: {entry['reason']}")
        if mx_problem is None or mx_problem[0] != "lookup_failed":  # a bogus MX: said once
            _dane_finding(host, entry, findings)
    return facts


def _resolver_trouble(resolver: Resolver) -> str | None:
    """With trust-ad: why the resolvers cannot be believed to validate (the
    root zone's keys, signed, come back without the AD bit); None when they do."""
    try:
        response = resolver.secure(".", "DNSKEY", denials=True)
    except DNSError as exc:
        return (
            f"this worker cannot judge DNSSEC: its resolvers failed on the root zone's keys ({exc})"
        )
    if response is not None and response.flags & dns.flags.AD:
        return None
    return (
        "this worker cannot judge DNSSEC: the resolvers in SMTPCHECK_DNS_SERVERS do not "
        "validate (the root zone's keys came without the AD bit), so SMTPCHECK_DNSSEC=trust-ad "
        "has nothing to trust"
    )


def _anchor_trouble(validator: dnssec.Validator, domain: str) -> str | None:
    """Why this worker cannot validate anything under its trust anchor (a
    wrong anchor, or resolvers that strip DNSSEC records); None when it can."""
    anchor = validator.anchor_for(dns.name.from_text(_absolute(domain)))
    if anchor is None:
        return None
    try:
        validator.zone_keys(anchor, depth=0)
    except (dnssec.Bogus, DNSError) as exc:
        return (
            f"this worker cannot validate DNSSEC: the keys of its trust anchor {anchor} do not "
            f"verify ({exc}); check SMTPCHECK_DNSSEC_ANCHORS and that SMTPCHECK_DNS_SERVERS "
            "return DNSSEC records"
        )
    return None


def _dane_host(
    host: str,
    result: Mapping[str, Any],
    judge: _Judge,
    settings: Settings,
    port: int,
    mx_problem: tuple[str, str] | None,
) -> dict[str, Any]:
    host = host.rstrip(".")
    entry: dict[str, Any] = {
        "host": host,
        "name": f"_{port}._tcp.{host}",
        "status": "not_applicable",
        "reason": None,
        "authenticated": False,
        "address_security": None,
        "tlsa_security": None,
        "tlsa": [],
        "matched": None,
        "records": [],
    }
    if ip_literal(host) is not None:
        entry["name"] = None
        entry["reason"] = "the MX names an IP address, which has no TLSA records"
        return entry
    problem = mx_problem
    names = [host]
    if settings.dnssec != "off" and problem is None:
        problem, final = _addresses(host, judge, entry)
        if final != host and problem is None:  # RFC 7672 2.2.2: the CNAME's target first
            names = [final, host]
    tlsa_error: str | None = None
    records: list[dane.TLSARecord] = []
    verdict: dnssec.Verdict | None = None
    for name in names:
        entry["name"] = f"_{port}._tcp.{name}"
        if settings.dnssec == "off":
            try:
                response = judge.resolver.secure(_absolute(entry["name"]), "TLSA")
            except DNSError as exc:
                tlsa_error = f"the TLSA lookup failed: {exc}"
                break
        else:
            response, verdict = judge.lookup(entry["name"], "TLSA")
            entry["tlsa_security"] = verdict.state
            if response is None:
                tlsa_error = verdict.reason
                break
        records = _tlsa_records(response)
        if records or (verdict is not None and verdict.state == dnssec.BOGUS):
            break
    entry["tlsa"] = [r.text() for r in records]
    entry["authenticated"] = verdict is not None and verdict.authenticated and bool(records)
    if problem is not None:
        entry["status"], entry["reason"] = problem
        return entry
    if settings.dnssec == "off":
        if tlsa_error:
            entry["reason"], entry["tlsa"] = tlsa_error, None
        elif records:
            entry["status"] = "unauthenticated"
            entry["reason"] = (
                "this worker does not validate DNSSEC (SMTPCHECK_DNSSEC=off), "
                "so the records cannot be trusted"
            )
        else:
            entry["reason"] = f"no TLSA records at {entry['name']}"
        return entry
    assert verdict is not None
    if tlsa_error or verdict.state == dnssec.BOGUS:
        entry["status"] = "lookup_failed"
        entry["reason"] = (
            tlsa_error or f"the TLSA answer at {entry['name']} does not validate: {verdict.reason}"
        )
        entry["tlsa"] = entry["tlsa"] or None
        return entry
    if not records:
        entry["reason"] = f"no TLSA records at {entry['name']} ({verdict.reason})"
        return entry
    if verdict.state == dnssec.INSECURE:
        entry["reason"] = (
            f"the TLSA records at {entry['name']} are not DNSSEC-signed ({verdict.reason})"
        )
        return entry
    tls = result.get("tls") or {}
    if not tls.get("established"):
        unjudged = _no_certificate(result)
        entry["status"] = "mismatch" if unjudged is None else "unverified"
        entry["reason"] = (
            f"DANE applies, but {unjudged}"
            if unjudged
            else "the server offered no working TLS, which DANE requires"
        )
        entry["records"] = [
            {
                "record": r.text(),
                "usage": dane.USAGES.get(r.usage),
                "matched": False,
                "reason": "no TLS session" if unjudged is None else "not judged",
            }
            for r in records
        ]
        return entry
    if not any(dane.usable(r) for r in records):
        entry["status"] = "unusable"
        entry["reason"] = (
            f"none of the TLSA records at {entry['name']} is usable for SMTP (only DANE-TA "
            "and DANE-EE with known parameters are, RFC 7672 3.1), so senders that use DANE "
            "require TLS but do not authenticate the certificate"
        )
        entry.update(dane.match(records, [], None, [host]))
        return entry
    reference = list(dict.fromkeys([host, *(n for n in names if n != host)]))
    judged = dane.match(records, tls.get("chain") or [], tls.get("certificate"), reference)
    entry.update(judged)
    if judged["matched"] is None:
        entry["status"] = "mismatch"
        entry["reason"] = "; ".join(sorted({r["reason"] for r in judged["records"]}))
    else:
        entry["status"] = "valid"
        entry["reason"] = f"{verdict.reason}; {judged['records'][judged['matched']]['reason']}"
    return entry


def _addresses(
    host: str, judge: _Judge, entry: dict[str, Any]
) -> tuple[tuple[str, str] | None, str]:
    """RFC 7672 2.2.2: the host's A and AAAA answers must be secure for
    DANE to apply. Returns the problem (status, reason) or None, and the
    name a CNAME chain leads to."""
    verdicts: list[dnssec.Verdict] = []
    final = host
    for rdtype in ("A", "AAAA"):
        response, verdict = judge.lookup(host, rdtype)
        verdicts.append(verdict)
        final = _cname_target(response, host) if response is not None else final
    bogus = [v for v in verdicts if v.state == dnssec.BOGUS]
    insecure = [v for v in verdicts if v.state == dnssec.INSECURE]
    entry["address_security"] = (
        dnssec.BOGUS if bogus else dnssec.INSECURE if insecure else dnssec.SECURE
    )
    if bogus:
        return (
            "lookup_failed",
            f"the address records of {host} do not validate: {bogus[0].reason}",
        ), final
    if insecure:
        return (
            "not_applicable",
            f"the address records of {host} are not DNSSEC-signed ({insecure[0].reason}), "
            "so senders do not use DANE for it (RFC 7672 2.2.2)",
        ), final
    return None, final


def _dane_finding(host: str, entry: Mapping[str, Any], findings: list[Finding]) -> None:
    status, reason = entry["status"], entry["reason"]
    if status == "valid":
        winner = entry["records"][entry["matched"]]
        findings.append(
            _finding(
                "pass", "dane_valid", f"DANE: {host}: {winner['reason']} (TLSA {winner['record']})"
            )
        )
    elif status == "mismatch":
        findings.append(
            _finding("fail", "dane_mismatch", f"DANE: {host}: no TLSA record matches: {reason}")
        )
    elif status == "unverified":
        findings.append(_finding("info", "dane_unverified", f"DANE: {host}: {reason}"))
    elif status == "unusable":
        findings.append(_finding("warning", "dane_unusable", f"DANE: {host}: {reason}"))
    elif status == "unauthenticated":
        findings.append(
            _finding(
                "warning", "dane_unauthenticated", f"DANE: {host} has TLSA records, but {reason}"
            )
        )
    elif status == "lookup_failed":
        findings.append(
            _finding(
                "fail",
                "dane_lookup_failed",
                f"DANE: {host}: {reason}; senders that use DANE do not deliver to it "
                "for now (RFC 7672 2.2)",
            )
        )
    elif status == "not_applicable" and entry["tlsa"]:
        findings.append(
            _finding(
                "warning",
                "dane_not_applicable",
                f"DANE: {host} has TLSA records, but DANE does not apply: {reason}; "
                "senders ignore the records",
            )
        )


# -- what a policy implies of the MX ------------------------------------------


def _implied(
    sts: Mapping[str, Any],
    danes: Mapping[str, Any],
    by_host: Mapping[str, Mapping[str, Any]],
    findings: list[Finding],
) -> None:
    enforced = (sts.get("policy") or {}).get("mode") == "enforce"
    dane_hosts = {  # where DANE applies: senders that use it require TLS
        h["host"].lower().rstrip(".")
        for h in danes.get("hosts", [])
        if h.get("status") in ("valid", "mismatch", "unusable", "unverified")
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
            ehlo  # without an EHLO reply, nothing is known of STARTTLS
            and tls.get("mode") != "implicit"
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
