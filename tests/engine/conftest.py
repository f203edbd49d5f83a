from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import pytest

from smtpcheck.config import Settings, Timeouts
from smtpcheck.contract import check_request
from tests.smtp_servers import Certificates
from workers.engine import run_check


@pytest.fixture
def settings(certificates: Certificates) -> Settings:
    """Loopback allowed (the test servers live there), every port allowed
    (they sit on free ports), the test CA trusted, short deadlines."""
    return Settings(
        allow_networks=(ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")),
        allowed_ports=frozenset(range(1, 65536)),
        helo_name="checker.test",
        ca_file=certificates.ca_file,
        timeouts=Timeouts(connect=3, command=5, total=20),
    )


@pytest.fixture
def check(settings: Settings) -> Callable[..., dict[str, Any]]:
    """``check(host=..., port=..., ...)`` runs the engine in-process."""

    def run(*, password: str | None = None, settings_: Settings | None = None, **request: Any):
        used = settings_ or settings
        normalized = check_request(used, **request)
        return run_check(normalized, used, password=password, check_id="test-check")

    return run
