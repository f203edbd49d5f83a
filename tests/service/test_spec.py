"""openapi.yaml: generated, committed, served, valid, and true to responses."""

from __future__ import annotations

import copy
import subprocess
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from flask.testing import FlaskClient
from openapi_spec_validator import validate

from service.jobstore import JobStore
from service.schemas import build_schemas
from service.spec import SPEC_PATH, render
from smtpcheck import contract
from smtpcheck.config import Limits, Settings, Timeouts
from smtpcheck.contract import (
    AuthRequest,
    CheckRequest,
    MessageRequest,
    RetryRequest,
    TimeoutsRequest,
)
from tests.service import jobs
from tests.service.conftest import ALICE, submit

ROOT = Path(__file__).resolve().parents[2]


def test_committed_spec_is_the_generated_one() -> None:
    assert SPEC_PATH == ROOT / "openapi.yaml"
    assert SPEC_PATH.read_text(encoding="utf-8") == render(Settings()), (
        "openapi.yaml is stale: run python -m service.spec --write"
    )


def test_spec_is_valid_openapi_3_1() -> None:
    document = yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))

    validate(document)
    assert document["openapi"] == "3.1.0"


def test_served_spec_is_the_committed_file_byte_for_byte(client: FlaskClient) -> None:
    response = client.get("/openapi.yaml")

    assert response.status_code == 200
    assert response.mimetype == "application/yaml"
    assert response.data == SPEC_PATH.read_bytes()


def test_every_limit_is_visible() -> None:
    schemas = yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))["components"]["schemas"]
    request = schemas["CheckRequest"]["properties"]

    assert request["rcpt_to"]["maxItems"] == 20
    assert request["data"]["maxLength"] == 1024 * 1024
    assert request["port"]["enum"] == [25, 465, 587, 2525]
    assert request["tls"]["enum"] == ["none", "starttls", "implicit", "auto"]
    assert "rcpt" in request["stop_after"]["enum"]
    assert schemas["Auth"]["properties"]["mechanism"]["enum"] == [
        "auto",
        "PLAIN",
        "LOGIN",
        "CRAM-MD5",
    ]
    assert schemas["Timeouts"]["properties"]["total"]["maximum"] == 300
    assert schemas["CheckRequest"]["additionalProperties"] is False


def test_module_prints_and_checks_the_spec() -> None:
    printed = subprocess.run(
        [sys.executable, "-W", "error", "-m", "service.spec"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    checked = subprocess.run([sys.executable, "-m", "service.spec", "--check"], cwd=ROOT)

    assert printed.stdout == SPEC_PATH.read_text(encoding="utf-8")
    assert printed.stderr == ""
    assert checked.returncode == 0


def component_validator(name: str) -> Callable[[Any], None]:
    document = yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))
    schema = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    validator = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    return validator.validate


def test_finished_and_failed_checks_match_the_spec(
    client: FlaskClient, store: JobStore, run_worker: Callable[..., bool]
) -> None:
    """Schemathesis only ever sees queued checks; these are the other shapes."""
    validate_check = component_validator("Check")
    store.job_function = jobs.FUNCTION
    finished = submit(
        client, {"host": "mx.example.com", "auth": {"username": "u", "password": "p"}}
    )
    store.job_function = jobs.CRASH
    failed = submit(client, {"host": "mx.example.com"})
    run_worker()

    for check_id in (finished, failed):
        validate_check(client.get(f"/v1/checks/{check_id}", headers=ALICE).get_json())
    # the list (results without their transcript) and the vantages, from the contract's types
    page = client.get("/v1/checks", headers=ALICE).get_json()
    assert {item["status"] for item in page["items"]} == {"finished", "failed"}
    component_validator("CheckPage")(page)
    vantages = client.get("/v1/vantages", headers=ALICE).get_json()
    assert vantages
    for vantage in vantages:
        component_validator("Vantage")(vantage)


def test_the_normalized_request_is_the_contracts_check_request() -> None:
    """service/schemas.py and smtpcheck.contract.CheckRequest name the same fields."""
    schemas = build_schemas(Settings())
    request_schema = schemas.check_request()
    normalized = request_schema.load(
        {
            "host": "mx.example.com",
            "auth": {"username": "u", "password": "p"},
            "mail_from": "a@example.org",
            "rcpt_to": ["b@example.com"],
            "message": {"subject": "s"},
        }
    )

    def keys(typed: Any) -> set[str]:
        return set(typing.get_type_hints(typed))

    assert set(normalized) == keys(CheckRequest) == set(request_schema.fields)
    for name, typed in (
        ("auth", AuthRequest),
        ("message", MessageRequest),
        ("timeouts", TimeoutsRequest),
        ("retry", RetryRequest),
    ):
        assert set(normalized[name]) == keys(typed), name


@pytest.mark.parametrize(
    "fields",
    [
        {"host": "mx.example.com"},
        {
            "host": "example.com",
            "mx": True,
            "mx_hosts": "all",
            "port": 587,
            "tls": "starttls",
            "auth": {"username": "u", "password": "p"},
            "mail_from": "",
            "rcpt_to": ["b@example.com"],
            "message": {"subject": "s"},
            "timeouts": {"total": 12},
            "retry_temporary": True,
            "retry": {"delay": 60},
            "probes": ["vrfy"],
            "vantage": "paris",
        },
    ],
)
def test_the_schema_and_check_request_fill_the_same_defaults(fields: dict[str, Any]) -> None:
    """One table of defaults (smtpcheck.contract): the API's load and the
    builder the worker's callers use must normalize a request alike, also
    under an operator's own default timeouts and retry caps."""
    for settings in (
        Settings(),
        Settings(timeouts=Timeouts(connect=3, command=4, total=50)).replace(
            limits=Limits(max_retry_attempts=2, max_retry_delay=100.0)
        ),
    ):
        loaded = build_schemas(settings).check_request().load(copy.deepcopy(fields))
        assert loaded == contract.check_request(settings, **copy.deepcopy(fields))


def test_result_schemas_are_closed_objects() -> None:
    """No open objects: every result object lists its keys and refuses others."""
    components = yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))["components"]["schemas"]
    result_names = {"CheckResult", "TLSFacts", "CertificateProblem", "AuthFacts", "DNSFacts"}
    assert result_names <= set(components)

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" or "properties" in node:
                closed = node.get("additionalProperties") is False or isinstance(
                    node.get("additionalProperties"), dict
                )
                assert closed, f"{where} is an open object"
            for key, value in node.items():
                walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{where}[{index}]")

    walk(components["CheckResult"], "CheckResult")
    walk(components["Check"], "Check")
    reply = components["ServerReply"]["properties"]["class"]
    assert "greylisted" in reply["enum"]  # the reply class, from the contract's enum


def test_the_contracts_literals_are_its_tuples() -> None:
    assert typing.get_args(contract.Stage) == contract.STAGES
    assert typing.get_args(contract.Probe) == contract.PROBES
    assert typing.get_args(contract.Severity) == contract.SEVERITIES
