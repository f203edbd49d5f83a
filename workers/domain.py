"""Checks of a mail domain (``mx: true``): find its MX hosts, check them one
by one until one answers (``mx_hosts: "first"``) or all of them at once
(``"all"``, bounded), and give one verdict with a result per host."""

from __future__ import annotations

import contextvars
import copy
import ipaddress
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from smtpcheck.config import Settings
from smtpcheck.contract import CheckRequest
from workers import cancel
from workers.errors import Canceled, DNSError
from workers.findings import sort_findings
from workers.mailpolicy import assess
from workers.plan import Plan
from workers.resolver import MXHost, Resolver
from workers.result import utc_timestamp
from workers.transcript import Transcript

#: Checks one host: the request with ``host`` set to an MX host (workers.check).
HostCheck = Callable[[CheckRequest], dict[str, Any]]

MAX_MX_HOSTS = 10
MAX_PARALLEL = 4
# Outcomes meaning "this host did not answer": "first" moves on to the next MX.
NO_ANSWER = {
    "dns_error",
    "target_forbidden",
    "connect_refused",
    "connect_timeout",
    "network_unreachable",
    "banner_timeout",
    "service_unavailable",
    "connection_closed",
}


def run_domain_check(
    request: CheckRequest, plan: Plan, settings: Settings, check_host: HostCheck
) -> dict[str, Any]:
    """Check the MX hosts of ``plan.host``, each with ``check_host``."""
    check_id = plan.check_id
    domain = plan.host
    mode = request["mx_hosts"]
    transcript = Transcript()
    deadline = transcript.started + plan.timeouts["total"]
    result: dict[str, Any] = {
        "check_id": check_id,
        "ok": False,
        "outcome": "dns_error",
        "stage": "connect",
        "summary": "",
        "target": {
            "host": domain,
            "port": plan.port,
            "address": None,
            "addresses": [],
            "source": None,
        },
        "vantage": settings.vantage,
        "started_at": utc_timestamp(),
        "finished_at": None,
        # No host reached yet: every stage's section is null (the contract's shape).
        **dict.fromkeys(("banner", "ehlo", "tls", "auth", "mail", "data", "dns", "probes")),
        "rcpt": [],
        "mx": {"domain": domain, "mode": mode, "hosts": [], "checked": 0},
        "hosts": [],
        "findings": [],
        "timings": {},
        "transcript": [],
    }
    transcript.note(f"looking up the MX records of {domain}")
    started = time.monotonic()
    try:
        hosts = Resolver(settings, deadline).mx(domain)
    except Canceled as exc:  # DELETE while the MX lookup waits (workers/cancel.py)
        result["timings"]["mx"] = transcript.elapsed_ms()
        transcript.error(f"canceled: {exc}")
        result["outcome"] = "canceled"
        result["summary"] = (
            f"The caller canceled the check while looking up the MX records of {domain}; "
            "nothing was dialled"
        )
        return _finish(result, transcript)
    except DNSError as exc:
        result["timings"]["mx"] = transcript.elapsed_ms()
        transcript.error(f"dns_error: {exc}")
        if exc.temporary:
            result["summary"] = (
                f"The MX records of {domain} cannot be read for now: {exc}; senders will "
                "retry, so mail is delayed, not lost"
            )
        else:
            result["summary"] = f"No mail can be delivered to {domain}: {exc}"
        result["findings"] = [{"severity": "fail", "code": "mx_dns_error", "message": str(exc)}]
        return _finish(result, transcript)
    result["timings"]["mx"] = round((time.monotonic() - started) * 1000, 1)
    result["mx"]["hosts"] = [
        {"preference": mx.preference, "host": mx.host, "implicit": mx.implicit} for mx in hosts
    ]
    for mx in hosts:
        kind = "no MX record: the domain itself (RFC 5321 5.1)" if mx.implicit else "MX"
        transcript.note(f"{kind} {mx.preference} {mx.host}")
    hosts = hosts[:MAX_MX_HOSTS]
    with cancel.shielded():  # a cancel now ends the next host's check instead
        mx_findings = _mx_target_findings(hosts, Resolver(settings, deadline))

    def check_mx(mx: MXHost) -> dict[str, Any]:
        left = max(deadline - time.monotonic(), 0.001)
        sub = copy.deepcopy(request)
        sub["host"], sub["mx"] = mx.host, False
        sub["timeouts"] = {
            "connect": plan.timeouts["connect"],
            "command": plan.timeouts["command"],
            "total": left,
        }
        begun = transcript.elapsed_ms()
        outcome = check_host(sub)
        outcome["preference"] = mx.preference
        outcome["_offset"] = begun
        return outcome

    checked: list[dict[str, Any]] = []
    if mode == "all":
        with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(hosts))) as pool:
            # Each host's check in this check's context: its lines go out live
            # (workers/events.py) and a DELETE reaches it (workers/cancel.py).
            contexts = [contextvars.copy_context() for _ in hosts]
            checked = list(pool.map(lambda c, mx: c.run(check_mx, mx), contexts, hosts))
        primary = checked[0]
        failures = [r for r in checked if not r["ok"]]
        result["ok"] = not failures
        result["outcome"] = failures[0]["outcome"] if failures else "ok"
        passed = len(checked) - len(failures)
        summary = f"{passed} of {len(checked)} MX hosts of {domain} passed"
        if failures:
            summary += f"; {failures[0]['target']['host']}: {failures[0]['summary']}"
        result["summary"] = summary
    else:
        for mx in hosts:
            checked.append(check_mx(mx))
            if checked[-1]["outcome"] not in NO_ANSWER or time.monotonic() >= deadline:
                break
        primary = checked[-1]
        result["ok"] = primary["ok"]
        result["outcome"] = primary["outcome"]
        skipped = len(checked) - 1
        prefix = f"{domain}: MX {primary['target']['host']}"
        if skipped:
            prefix += f" (after {skipped} that did not answer)"
        result["summary"] = f"{prefix}: {primary['summary']}"

    result["mx"]["checked"] = len(checked)
    result["stage"] = primary["stage"]
    result["target"].update(
        address=primary["target"]["address"],
        addresses=primary["target"]["addresses"],
        source=primary["target"]["source"],
    )
    for key in ("banner", "ehlo", "tls", "auth", "mail", "rcpt", "data", "dns", "probes"):
        result[key] = primary.get(key)
    for host_result in checked:
        offset = host_result.pop("_offset")
        name = host_result["target"]["host"]
        transcript.entries.append(
            {"t_ms": offset, "dir": "note", "text": f"checking MX host {name}"}
        )
        for entry in host_result.pop("transcript"):
            transcript.entries.append({**entry, "t_ms": round(entry["t_ms"] + offset, 1)})
        result["findings"] += [
            {**finding, "message": f"{name}: {finding['message']}"}
            for finding in host_result["findings"]
        ]
    result["hosts"] = checked
    result["findings"] += mx_findings
    started = time.monotonic()
    transcript.note(f"checking what senders enforce for {domain}: MTA-STS, TLS-RPT, DANE")
    with cancel.shielded():  # bounded by its own deadline, as before cancels existed
        policy, policy_findings = assess(
            domain,
            [mx.host for mx in hosts],
            checked,
            settings,
            deadline,
            port=plan.port,
            note=transcript.note,
        )
    result["timings"]["policy"] = round((time.monotonic() - started) * 1000, 1)
    result["policy"] = policy
    result["findings"] += policy_findings
    broken = [f for f in policy_findings if f["severity"] == "fail"]
    if result["ok"] and broken:
        # The dialogue alone looked fine: say what a sender enforcing the policy would do.
        more = f" (and {len(broken) - 1} more)" if len(broken) > 1 else ""
        result["summary"] += f"; but {broken[0]['message']}{more}"
    sort_findings(result["findings"])
    return _finish(result, transcript)


def _mx_target_findings(hosts: list[MXHost], resolver: Resolver) -> list[dict[str, str]]:
    """RFC 5321 5.1: an MX names a host, never an address, and never an alias."""
    found: list[dict[str, str]] = []
    for mx in hosts:
        if mx.implicit:
            continue
        try:
            ipaddress.ip_address(mx.host.strip("[]"))
        except ValueError:
            pass
        else:
            found.append(
                {
                    "severity": "fail",
                    "code": "mx_ip_literal",
                    "message": f"The MX record names an IP address ({mx.host}), not a host "
                    "name: RFC 5321 forbids it and many senders will not deliver",
                }
            )
            continue
        alias = resolver.cname(mx.host)
        if alias:
            found.append(
                {
                    "severity": "warning",
                    "code": "mx_cname",
                    "message": f"The MX host {mx.host} is an alias (CNAME to {alias}): "
                    "RFC 5321 wants the MX to name the host itself",
                }
            )
    return found


def _finish(result: dict[str, Any], transcript: Transcript) -> dict[str, Any]:
    result["timings"]["total"] = transcript.elapsed_ms()
    result["finished_at"] = utc_timestamp()
    result["transcript"] = transcript.as_list()
    return result
