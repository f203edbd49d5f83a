"""The engine's one way in: run the check a normalized request asks for.

A host is checked by workers.check; a mail domain (``mx: true``) by
workers.domain, which checks each of its MX hosts the same way. The RQ job
(workers.job), ``smtpcheck check --local``, the benches and the tests all
come in here, so check.py stays one host's check and neither it nor
domain.py imports the other.
"""

from __future__ import annotations

from typing import Any

from smtpcheck.config import Settings
from smtpcheck.contract import CheckRequest
from workers.check import Gate, run_host_check
from workers.domain import run_domain_check
from workers.plan import Plan


def run_check(
    request: CheckRequest,
    settings: Settings,
    *,
    password: str | None = None,
    check_id: str | None = None,
    gate: Gate | None = None,
) -> dict[str, Any]:
    """The result JSON of ``request``, complete as the API normalized it
    (``smtpcheck.contract.check_request`` makes one for callers without the
    API). ``password``: the unsealed AUTH password (the request carries
    ``****``); ``gate``: see :data:`workers.check.Gate`; None (``smtpcheck
    check --local``) runs ungated."""
    if not request["mx"]:
        return run_host_check(request, settings, password=password, check_id=check_id, gate=gate)

    def check_host(host_request: CheckRequest) -> dict[str, Any]:
        return run_host_check(
            host_request, settings, password=password, check_id=check_id, gate=gate
        )

    plan = Plan.from_request(request, settings, password=password, check_id=check_id)
    return run_domain_check(request, plan, settings, check_host)
