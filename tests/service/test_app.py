"""The app factory's Flask: what it skips at every request, it answers as Flask does."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from flask import Flask


def _outcome(ensure_sync: Callable[[Any], Any], func: Any) -> str:
    try:
        made = ensure_sync(func)
    except RuntimeError as error:  # Flask's async_to_sync without asgiref installed
        return f"refused: {error}"
    return "as it is" if made is func else "wrapped"


class Hooks:
    def plain(self) -> None:
        return None

    async def coroutine(self) -> None:
        return None


def test_every_kind_of_callable_is_made_synchronous_as_flask_makes_it(app: Flask) -> None:
    def plain() -> None:
        return None

    async def coroutine() -> None:
        return None

    hooks = Hooks()
    kinds = {
        "def": plain,
        "async def": coroutine,
        "lambda": lambda: None,
        "partial of a def": functools.partial(plain),
        "partial of an async def": functools.partial(coroutine),
        "method": hooks.plain,
        "async method": hooks.coroutine,
        "builtin": len,
        "class": dict,
    }
    assert type(app) is not Flask  # the factory's own
    for name, func in kinds.items():
        theirs = _outcome(functools.partial(Flask.ensure_sync, app), func)
        assert _outcome(app.ensure_sync, func) == theirs, name
    assert _outcome(app.ensure_sync, plain) == "as it is"
    assert _outcome(app.ensure_sync, coroutine) != "as it is"


def test_a_session_is_flasks_null_one(app: Flask) -> None:
    """Flask without a secret key: nothing read from a cookie, nothing written,
    and a write refused with Flask's own error."""
    from flask import session
    from flask.sessions import NullSession

    plain = Flask(__name__)

    @plain.get("/session")
    @app.get("/session")
    def read() -> str:
        assert isinstance(session, NullSession)
        try:
            session["seen"] = True
        except RuntimeError as error:
            return str(error)
        return "written"

    answers = []
    for each in (plain, app):
        client = each.test_client()
        client.set_cookie("session", "eyJzZWVuIjp0cnVlfQ.x.y")
        response = client.get("/session")
        answers.append((response.status_code, response.get_data(), response.headers.get("Vary")))
        assert "Set-Cookie" not in response.headers
    assert answers[0] == answers[1]
    assert answers[1][1].startswith(b"The session is unavailable")


def test_a_requests_blueprints_are_flasks(app: Flask) -> None:
    from flask import Request, request

    for path, names in (("/v1/checks", ["checks"]), ("/healthz", ["health"]), ("/nowhere", [])):
        with app.test_request_context(path):
            assert request.blueprints == Request.blueprints.fget(request) == names, path  # type: ignore[attr-defined]
            assert request.blueprints is request.blueprints  # worked out once
