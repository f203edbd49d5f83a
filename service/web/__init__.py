"""The pages people read: the check page at ``/`` and the API reference at ``/docs``.

Both are static files in this package, served with a Content-Security-Policy
that lets them load nothing from another origin: the check page talks to this
service's own /v1 API (with the API key the person typed, kept in the
browser's sessionStorage), and /docs renders the service's own
``/openapi.yaml`` with the Swagger UI that the ``flask-swagger-ui`` package
ships (its files only; not its blueprint, whose page carries inline script).
"""

from __future__ import annotations

import mimetypes
from functools import lru_cache
from pathlib import Path

import flask_swagger_ui
from flask import Blueprint, Response, abort, request

STATIC = Path(__file__).resolve().parent / "static"
SWAGGER_UI = Path(flask_swagger_ui.__file__).resolve().parent / "dist"

#: The Swagger UI files /docs loads; nothing else of that folder is served.
SWAGGER_FILES = frozenset({"swagger-ui.css", "swagger-ui-bundle.js", "LICENSE"})

#: The check page: its own scripts, styles and API calls, nothing from elsewhere.
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
#: Swagger UI sets style attributes from script, so styles may be inline there;
#: scripts, fonts, images and requests still come from this origin only.
DOCS_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; form-action 'none'; "
    "frame-ancestors 'none'; base-uri 'none'"
)

blueprint = Blueprint("web", __name__, static_folder=None)


@lru_cache(maxsize=32)
def _read(folder: Path, name: str) -> bytes | None:
    """A file of ``folder`` by bare name, read once (a few small files and one 1.6 MB script)."""
    if "/" in name or "\\" in name or name.startswith("."):
        return None
    path = folder / name
    return path.read_bytes() if path.is_file() else None


def _file(folder: Path, name: str, policy: str) -> Response:
    body = _read(folder, name)
    if body is None:
        abort(404)
    mimetype = mimetypes.guess_type(name)[0] or "application/octet-stream"
    response = Response(body, mimetype=mimetype)
    response.add_etag()
    response.make_conditional(request)  # a 304 for a matching If-None-Match
    return _guarded(response, policy)


def _guarded(response: Response, policy: str) -> Response:
    response.headers["Content-Security-Policy"] = policy
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-cache"
    return response


@blueprint.get("/")
def page() -> Response:
    """The page to run a check and watch it."""
    return _file(STATIC, "index.html", PAGE_POLICY)


@blueprint.get("/ui/<name>")
def page_asset(name: str) -> Response:
    """The pages' own scripts and styles."""
    return _file(STATIC, name, DOCS_POLICY if name.startswith("docs.") else PAGE_POLICY)


@blueprint.get("/docs")
def docs() -> Response:
    """The API reference: /openapi.yaml rendered by the vendored Swagger UI."""
    return _file(STATIC, "docs.html", DOCS_POLICY)


@blueprint.get("/docs/assets/<name>")
def docs_asset(name: str) -> Response:
    """Swagger UI's script and styles, from the installed flask-swagger-ui package."""
    if name not in SWAGGER_FILES:
        abort(404)
    return _file(SWAGGER_UI, name, DOCS_POLICY)
