"""The smtpcheck HTTP API (Flask). Never imports ``workers``.

``create_app()`` builds the app from :class:`~smtpcheck.config.Settings`;
gunicorn runs ``service:create_app()``. The Redis client and the RQ queues
live in ``app.extensions["smtpcheck"]`` (a :class:`service.jobstore.JobStore`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from inspect import CO_COROUTINE
from types import FunctionType
from typing import TYPE_CHECKING, Any

from smtpcheck.config import ConfigError, Settings

if TYPE_CHECKING:
    from flask import Flask

__all__ = ["create_app"]

log = logging.getLogger("smtpcheck.service")


@functools.cache
def _flask_class() -> type[Flask]:
    """Flask, less the work at every request that this API never needs (a class
    made on first use: Flask is imported in create_app, see there)."""
    from flask import Flask, Request
    from flask.sessions import NullSession, SecureCookieSessionInterface

    class ApiRequest(Request):
        #: Flask's, worked out once a request: Flask asks for it when it runs the
        #: before-request hooks, the after-request hooks and the teardown (three
        #: properties deep each time), and the URL rule it follows is matched
        #: before any of them and never again.
        blueprints = functools.cached_property(Request.blueprints.fget)  # type: ignore[attr-defined]

    class NoSessions(SecureCookieSessionInterface):
        """Flask's sessions without a secret key, which this API never sets: every
        request's session is the null one, refusing writes; one for all requests
        instead of a serializer asked for, a key found missing and a new null
        session at every request (six Python calls)."""

        null = NullSession()

        def open_session(self, app: Flask, request: Any) -> NullSession:
            return self.null

    class Api(Flask):
        request_class = ApiRequest
        session_interface = NoSessions()

        def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
            """Flask's, with its answer for a plain function found without a call.

            Flask asks of every hook and view, at every request, whether it is
            a coroutine function: five Python calls in ``inspect`` each time,
            four times a request here. A plain ``def`` (every hook and view of
            this API) is answered from its code flags, as ``inspect`` answers
            it; anything else goes to Flask's own.
            """
            if (
                type(func) is FunctionType
                and not func.__code__.co_flags & CO_COROUTINE
                and not hasattr(func, "_is_coroutine_marker")  # inspect.markcoroutinefunction
            ):
                return func
            return super().ensure_sync(func)

    return Api


def create_app(config: Settings | Mapping[str, str] | None = None) -> Flask:
    """The API app.

    ``config`` is a :class:`Settings`, or a mapping read like the environment
    (``{"REDIS_URL": ..., "SMTPCHECK_API_KEYS": ...}``), or None for
    ``Settings.from_env()``. Raises ConfigError when API keys are required
    but none are configured.
    """
    # Imported here, not above: `import service.schemas` (the request schema
    # `smtpcheck check` validates with) then loads neither Flask nor Redis.
    from . import problems
    from .apikeys import VARIABLE as API_KEYS_VARIABLE
    from .apikeys import ApiKeys
    from .jobstore import JobStore
    from .schemas import build_schemas

    if config is None:
        settings = Settings.from_env()
    elif isinstance(config, Settings):
        settings = config
    else:
        settings = Settings.from_env(config)

    keys: ApiKeys | None = None
    if settings.auth_enabled:
        keys = ApiKeys.parse(settings.api_keys)
        if not keys:
            raise ConfigError(
                API_KEYS_VARIABLE,
                "no API key configured: set SMTPCHECK_API_KEYS=name:key[,name:key...] "
                "or, to accept every caller without a key, SMTPCHECK_AUTH=off",
            )
    else:
        log.warning(
            "SMTPCHECK_AUTH=off: the API accepts every caller WITHOUT an API key; "
            "all checks belong to %r. Do not expose this instance.",
            "anonymous",
        )
    if not settings.secret_key:
        log.warning("no SMTPCHECK_SECRET_KEY: checks that ask for AUTH will be refused (503)")

    app = _flask_class()(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.limits.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["smtpcheck"] = JobStore(settings)
    app.extensions["smtpcheck.apikeys"] = keys
    app.extensions["smtpcheck.request_schema"] = build_schemas(settings).check_request()
    problems.register(app)
    from . import checks, health, metrics, requestlog, spec, web  # here: `python -m service.spec`

    requestlog.install(app)  # every answer's log line and its count in the metrics

    for module in (checks, health, metrics, spec, web):
        app.register_blueprint(module.blueprint)
    return app
