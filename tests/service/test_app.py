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
