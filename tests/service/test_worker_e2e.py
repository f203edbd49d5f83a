"""The API with the real ``workers.job.run_check_job`` run by a real RQ worker,
against a real SMTP server (aiosmtpd): what a caller sees end to end.
"""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import ip_network

import pytest
from flask.testing import FlaskClient

from service import create_app
from smtpcheck.config import Settings
from tests.service.conftest import ALICE, API_KEYS, submit
from tests.smtp_servers import LOCAL_DOMAIN, USERS, SMTPTarget


def test_real_check_through_api_and_worker(
    redis_url: str,
    smtp_target: Callable[..., SMTPTarget],
    run_worker: Callable[..., bool],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    target = smtp_target()
    # The worker reads its own settings from the environment, as in production.
    monkeypatch.setenv("SMTPCHECK_SECRET_KEY", "test-secret")
    monkeypatch.setenv("SMTPCHECK_ALLOW_NETWORKS", "127.0.0.0/8")
    monkeypatch.setenv("SMTPCHECK_ALLOWED_PORTS", str(target.port))
    monkeypatch.setenv("SMTPCHECK_HELO_NAME", "checker.test")
    monkeypatch.delenv("SMTPCHECK_DNS_SERVERS", raising=False)
    settings = Settings(
        redis_url=redis_url,
        secret_key="test-secret",
        api_keys=API_KEYS,
        allow_networks=(ip_network("127.0.0.0/8"),),
        allowed_ports=frozenset({target.port}),
    )
    app = create_app(settings)
    client: FlaskClient = app.test_client()
    try:
        ((user, password),) = USERS.items()
        check_id = submit(
            client,
            {
                "host": "127.0.0.1",
                "port": target.port,
                "tls": "none",
                "auth": {"username": user, "password": password},
                "mail_from": f"{user}@{LOCAL_DOMAIN}",
                "rcpt_to": [f"bob@{LOCAL_DOMAIN}"],
                "stop_after": "rcpt",
            },
        )
        run_worker()

        body = client.get(f"/v1/checks/{check_id}", headers=ALICE).get_json()
        transcript = client.get(f"/v1/checks/{check_id}/transcript", headers=ALICE)
    finally:
        app.extensions["smtpcheck"].close()

    assert body["status"] == "finished", body
    assert body["result"]["outcome"] == "ok", body["result"]
    assert body["result"]["auth"]["accepted"] is True
    text = transcript.get_data(as_text=True)
    assert transcript.status_code == 200
    assert "220" in text
    assert password not in text
