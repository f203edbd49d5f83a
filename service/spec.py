"""openapi.yaml, generated from the request's marshmallow schema, the
contract's types (smtpcheck.contract: the result and every body carrying
it) and the routes below.

``python -m service.spec`` prints the spec for the default settings;
``--write`` writes it to the repository's openapi.yaml; ``--check`` exits 1
when that file is stale. ``GET /openapi.yaml`` serves the spec generated
from the running app's settings, which is the same file byte for byte
unless the operator changed a limit.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import yaml
from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Response, current_app

from smtpcheck.config import Settings
from smtpcheck.contract import (
    CHECK_ID_PATTERN,
    STATUSES,
    CheckCreated,
    CheckDocument,
    CheckPage,
    CheckRequest,
    Vantage,
)

from .problems import PROBLEM_JSON
from .schemas import (
    HealthSchema,
    ProblemSchema,
    build_schemas,
)
from .typeschema import Components

SPEC_PATH = Path(__file__).resolve().parent.parent / "openapi.yaml"
MEDIA_TYPE = "application/yaml"

blueprint = Blueprint("spec", __name__)

DESCRIPTION = """\
Run SMTP checks from where the workers sit: POST a check, get its id at once,
then read its status, result and transcript. Every error is
application/problem+json (RFC 9457); a 422 adds `errors`, a map from a
dotted field path (`auth.password`, `rcpt_to.0`) to messages.
"""


@blueprint.get("/openapi.yaml")
def openapi_yaml() -> Response:
    cached = current_app.extensions.get("smtpcheck.spec")
    if cached is None:
        cached = render(current_app.extensions["smtpcheck"].settings)
        current_app.extensions["smtpcheck.spec"] = cached
    return Response(cached, mimetype=MEDIA_TYPE)


class _Dumper(yaml.SafeDumper):
    """Plain YAML: no anchors for shared pieces, multi-line text as literal blocks."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)

#: Top-level keys in the order a reader expects them.
_ORDER = ("openapi", "info", "servers", "security", "paths", "components")


def render(settings: Settings) -> str:
    """The spec as YAML text, deterministic for given settings."""
    document = build_spec(settings).to_dict()
    ordered = {key: document[key] for key in _ORDER if key in document}
    ordered.update((key, value) for key, value in document.items() if key not in ordered)
    return yaml.dump(ordered, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)


def _version() -> str:
    try:
        return version("smtpcheck")
    except PackageNotFoundError:  # pragma: no cover - the project is installed
        return "0.0.0"


def _problem(description: str, **headers: dict[str, Any]) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {PROBLEM_JSON: {"schema": "Problem"}},
    }
    if headers:
        response["headers"] = headers
    return response


def _json(schema: Any, description: str, **extra: Any) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema}},
        **extra,
    }


def build_spec(settings: Settings) -> APISpec:
    limits = settings.limits
    schemas = build_schemas(settings)
    spec = APISpec(
        title="smtpcheck",
        version=_version(),
        openapi_version="3.1.0",
        plugins=[MarshmallowPlugin()],
        info={"description": DESCRIPTION, "license": {"name": "MIT", "identifier": "MIT"}},
    )
    if settings.auth_enabled:
        spec.components.security_scheme(
            "bearer",
            {
                "type": "http",
                "scheme": "bearer",
                "description": "an API key from SMTPCHECK_API_KEYS; a check is visible "
                "only to the key that created it",
            },
        )
        spec.options["security"] = [{"bearer": []}]
    spec.components.schema("CheckRequest", schema=schemas.check_request)
    spec.components.schema("Health", schema=HealthSchema)
    spec.components.schema("Problem", schema=ProblemSchema)
    # Every body that carries the contract's data, from its types: the
    # request's component is the validating schema's, above.
    typed = Components(names={CheckDocument: "Check"}, elsewhere={CheckRequest: "CheckRequest"})
    for root in (CheckDocument, CheckPage, CheckCreated, Vantage):
        typed.ref(root)
    for name, component in typed.schemas.items():
        spec.components.schema(name, component)

    retry_after = {"description": "seconds to wait", "schema": {"type": "integer"}}
    spec.components.response(
        "Unauthorized",
        _problem(
            "no API key, or an unknown one",
            **{
                "WWW-Authenticate": {
                    "description": 'Bearer realm="smtpcheck"',
                    "schema": {"type": "string"},
                }
            },
        ),
    )
    spec.components.response("NotFound", _problem("no such check for this API key"))
    spec.components.response("Invalid", _problem("validation failed; see `errors`"))
    spec.components.response(
        "Unavailable", _problem("Redis cannot be reached", **{"Retry-After": retry_after})
    )
    spec.components.response(
        "TooManyHeld",
        _problem(
            f"too-many-held: this API key already holds {settings.max_held_per_key} "
            "requests open (?wait, event streams)",
            **{"Retry-After": retry_after},
        ),
    )
    spec.components.response(
        "Busy",
        _problem(
            f"Redis cannot be reached; or busy: this API process already holds "
            f"{settings.max_held} requests open",
            **{"Retry-After": retry_after},
        ),
    )
    ref = {
        name: {"$ref": f"#/components/responses/{name}"}
        for name in ("Unauthorized", "NotFound", "Invalid", "Unavailable", "TooManyHeld", "Busy")
    }
    guarded = {"401": ref["Unauthorized"]} if settings.auth_enabled else {}
    open_access: dict[str, Any] = {"security": []} if settings.auth_enabled else {}

    check_id = {
        "name": "check_id",
        "in": "path",
        "required": True,
        "description": "the id POST /v1/checks returned",
        "schema": {"type": "string", "pattern": CHECK_ID_PATTERN},
    }
    wait = {
        "name": "wait",
        "in": "query",
        "required": False,
        "description": "hold the request up to this many seconds until the check ends",
        "schema": {"type": "integer", "minimum": 0, "maximum": limits.max_wait, "default": 0},
    }

    spec.path(
        path="/v1/checks",
        operations={
            "post": {
                "operationId": "createCheck",
                "summary": "Queue a check",
                "requestBody": {
                    "required": True,
                    "description": f"at most {limits.max_body_bytes} bytes",
                    "content": {
                        "application/json": {
                            "schema": "CheckRequest",
                            "example": {
                                "host": "example.com",
                                "mx": True,
                                "mail_from": "",
                                "rcpt_to": ["postmaster@example.com"],
                                "stop_after": "rcpt",
                            },
                        }
                    },
                },
                "responses": {
                    "202": _json(
                        "CheckCreated",
                        "queued",
                        headers={
                            "Location": {
                                "description": "the new check",
                                "schema": {"type": "string"},
                            }
                        },
                    ),
                    "400": _problem("the body is not JSON"),
                    **guarded,
                    "413": _problem(f"the body is over {limits.max_body_bytes} bytes"),
                    "415": _problem("the body is not application/json"),
                    "422": ref["Invalid"],
                    "429": _problem(
                        f"rate-limited: more than {settings.rate_limit} submissions for this "
                        f"API key; or too-many-checks: it already has "
                        f"{settings.max_concurrent_per_key} checks queued or running",
                        **{"Retry-After": retry_after},
                    ),
                    "503": _problem(
                        "Redis cannot be reached, or AUTH was asked of a service with "
                        "no SMTPCHECK_SECRET_KEY",
                        **{"Retry-After": retry_after},
                    ),
                },
            },
            "get": {
                "operationId": "listChecks",
                "summary": "This API key's checks, newest first, a page at a time",
                "description": "Each item is the check as GET /v1/checks/{check_id} returns "
                "it, without `result.transcript`. Pass `next` back as `cursor` for the "
                "next page; checks created meanwhile never shift a later page (no item "
                "twice, none skipped). `next` is null on the last page.",
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "description": "items per page",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "required": False,
                        "description": "the previous page's `next` (opaque)",
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "status",
                        "in": "query",
                        "required": False,
                        "description": "only checks with this status",
                        "schema": {"type": "string", "enum": list(STATUSES)},
                    },
                ],
                "responses": {
                    "200": _json("CheckPage", "one page of checks"),
                    **guarded,
                    "422": ref["Invalid"],
                    "503": ref["Unavailable"],
                },
            },
        },
    )
    spec.path(
        path="/v1/checks/{check_id}",
        parameters=[check_id],
        operations={
            "get": {
                "operationId": "getCheck",
                "summary": "Status, request and (once finished) result of a check",
                "parameters": [wait],
                "responses": {
                    "200": _json("Check", "the check"),
                    **guarded,
                    "404": ref["NotFound"],
                    "422": ref["Invalid"],
                    "429": ref["TooManyHeld"],
                    "503": ref["Busy"],
                },
            },
            "delete": {
                "operationId": "deleteCheck",
                "summary": "Cancel a queued or running check, or delete an ended one",
                "description": "A queued check is canceled at once; a running one stops "
                "within a second (QUIT if the dialogue allows it) and ends with status "
                "`canceled`, outcome `canceled` and its transcript so far. Either stays "
                "readable; DELETE it again to delete it.",
                "responses": {
                    "202": _json("Check", "canceled (a running check: being canceled)"),
                    "204": {"description": "it had ended: deleted"},
                    **guarded,
                    "404": ref["NotFound"],
                    "503": ref["Unavailable"],
                },
            },
        },
    )
    spec.path(
        path="/v1/checks/{check_id}/transcript",
        parameters=[check_id],
        operations={
            "get": {
                "operationId": "getTranscript",
                "summary": "The transcript as text, laid out like a terminal session",
                "parameters": [wait],
                "responses": {
                    "200": {
                        "description": "swaks-like markers: === notes, <- server, -> client, "
                        "<~ ~> inside TLS, *** errors; each line prefixed with elapsed ms. "
                        "While the check is queued or running: the lines so far",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **guarded,
                    "404": ref["NotFound"],
                    "409": _problem(
                        "the check failed to run; or, for vantage `all`, some vantage has not ended"
                    ),
                    "422": ref["Invalid"],
                    "429": ref["TooManyHeld"],
                    "503": ref["Busy"],
                },
            }
        },
    )
    spec.path(
        path="/v1/checks/{check_id}/events",
        parameters=[check_id],
        operations={
            "get": {
                "operationId": "getCheckEvents",
                "summary": "The check as it happens, as Server-Sent Events",
                "description": '`status` events (`{"id", "status"}`) first and at '
                "every change; one `line` event per transcript line as the worker records "
                'it (`{"t_ms", "dir", "text"}`, `tls` inside TLS), whose SSE `id` '
                "resumes the stream when sent back as `Last-Event-ID`; once the check "
                "has ended, a `result` event with the check as GET /v1/checks/{check_id} "
                "returns it, and the stream ends. A check with vantage `all` has one "
                "merged stream of every vantage's events, oldest first: each `line` event "
                'and each vantage\'s `status` event (`{"id", "vantage", "status"}`, '
                "with that vantage's check id) carry `vantage`, the fan-out's own "
                "`status` events do not, its SSE `id` is every vantage's last entry id "
                "joined by `,` (in the order of `vantages`), and the final `result` is the "
                "fan-out as GET /v1/checks/{check_id} returns it. A stream is held for at "
                f"most {limits.max_wait} s: reconnect with `Last-Event-ID` to go on "
                "(browsers' EventSource does so by itself).",
                "parameters": [
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "description": "the id of the last `line` event received; one "
                        "that is not this stream's starts it from the first line",
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "the event stream",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **guarded,
                    "404": ref["NotFound"],
                    "429": ref["TooManyHeld"],
                    "503": ref["Busy"],
                },
            }
        },
    )
    spec.path(
        path="/v1/vantages",
        operations={
            "get": {
                "operationId": "listVantages",
                "summary": "Vantage points, their live workers and queue depth",
                "responses": {
                    "200": _json({"type": "array", "items": "Vantage"}, "the vantages"),
                    **guarded,
                    "503": ref["Unavailable"],
                },
            }
        },
    )
    spec.path(
        path="/healthz",
        operations={
            "get": {
                "operationId": "healthz",
                "summary": "Liveness: the process answers",
                **open_access,
                "responses": {"200": _json("Health", "alive")},
            }
        },
    )
    spec.path(
        path="/readyz",
        operations={
            "get": {
                "operationId": "readyz",
                "summary": "Readiness: Redis answers",
                **open_access,
                "responses": {"200": _json("Health", "ready"), "503": ref["Unavailable"]},
            }
        },
    )
    spec.path(
        path="/metrics",
        operations={
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus text format",
                **open_access,
                "responses": {
                    "200": {
                        "description": "metrics",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "503": ref["Unavailable"],
                },
            }
        },
    )
    pages = {
        "/": ("page", "The web page: run a check and watch it live (asks for an API key)"),
        "/docs": ("docs", "This document rendered for reading, served with no CDN"),
    }
    for path, (operation, summary) in pages.items():
        spec.path(
            path=path,
            operations={
                "get": {
                    "operationId": operation,
                    "summary": summary,
                    **open_access,
                    "responses": {
                        "200": {
                            "description": "an HTML page",
                            "content": {"text/html": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
        )
    spec.path(
        path="/openapi.yaml",
        operations={
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                **open_access,
                "responses": {
                    "200": {
                        "description": "the OpenAPI 3.1 document",
                        "content": {MEDIA_TYPE: {"schema": {"type": "object"}}},
                    }
                },
            }
        },
    )
    return spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.spec", description=__doc__)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true", help=f"write {SPEC_PATH}")
    group.add_argument("--check", action="store_true", help=f"exit 1 if {SPEC_PATH} is stale")
    args = parser.parse_args(argv)
    text = render(Settings())
    if args.write:
        SPEC_PATH.write_text(text, encoding="utf-8")
        print(f"wrote {SPEC_PATH}")
    elif args.check:
        current = SPEC_PATH.read_text(encoding="utf-8") if SPEC_PATH.exists() else ""
        if current != text:
            print(f"{SPEC_PATH} is stale: run python -m service.spec --write", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
