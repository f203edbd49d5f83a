"""JSON Schema (OpenAPI 3.1) for the contract's TypedDicts.

openapi.yaml's result schemas are generated from the types in
``smtpcheck.contract`` rather than written a second time: every TypedDict
becomes a closed object component (``additionalProperties: false``) whose
required keys are the ones not marked NotRequired; ``Annotated[T, "text"]``
gives a description and ``Annotated[T, JSONSchema(...)]`` keywords such as
a ``format``; a StrEnum or a Literal becomes an ``enum``.
"""

from __future__ import annotations

import enum
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, NotRequired, Required, Union, get_args, get_origin

from smtpcheck.contract import JSONSchema

_PLAIN = {str: "string", int: "integer", float: "number", bool: "boolean"}


def is_typeddict(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, dict) and hasattr(tp, "__required_keys__")


class Components:
    """Collects a component per TypedDict reached from the roots.

    ``names``: a component name other than the type's own; ``elsewhere``:
    types whose component is made elsewhere (under that name), only referred to.
    """

    def __init__(
        self,
        *,
        names: Mapping[type, str] | None = None,
        elsewhere: Mapping[type, str] | None = None,
    ) -> None:
        self.schemas: dict[str, dict[str, Any]] = {}
        self.names = dict(names or {})
        self.elsewhere = dict(elsewhere or {})

    def ref(self, typed: type) -> dict[str, Any]:
        if typed in self.elsewhere:
            return {"$ref": f"#/components/schemas/{self.elsewhere[typed]}"}
        name = self.names.get(typed, typed.__name__)
        if name not in self.schemas:
            self.schemas[name] = {}  # placeholder: recursive types refer to themselves
            self.schemas[name] = self._object(typed)
        return {"$ref": f"#/components/schemas/{name}"}

    def _object(self, typed: type) -> dict[str, Any]:
        hints = typing.get_type_hints(typed, include_extras=True)
        # Not __required_keys__: with postponed annotations (PEP 563) Python
        # 3.11 cannot see a NotRequired inside a string; the hints can.
        required = sorted(key for key, hint in hints.items() if not _not_required(hint))
        properties = {key: self.schema(hint) for key, hint in hints.items()}
        schema: dict[str, Any] = {"type": "object"}
        doc = (typed.__doc__ or "").strip()
        if doc and not doc.startswith(f"{typed.__name__}("):  # not TypedDict's own doc
            schema["description"] = " ".join(doc.split())
        schema.update(properties=properties, required=required, additionalProperties=False)
        return schema

    def schema(self, hint: Any) -> dict[str, Any]:
        origin = get_origin(hint)
        if origin is typing.Annotated:
            inner, *extras = get_args(hint)
            schema = self.schema(inner)
            for keywords in (extra for extra in extras if isinstance(extra, JSONSchema)):
                schema = {**schema, **keywords.keywords()}
            texts = [extra for extra in extras if isinstance(extra, str)]
            if texts:
                if "$ref" in schema:  # 3.1 allows siblings of $ref, but keep it plain
                    schema = {"allOf": [schema]}
                schema["description"] = " ".join(texts)
            return schema
        if origin in (NotRequired, Required):
            return self.schema(get_args(hint)[0])
        if origin in (Union, types.UnionType):
            members = get_args(hint)
            nullable = type(None) in members
            rest = [m for m in members if m is not type(None)]
            if len(rest) == 1:
                schema = self.schema(rest[0])
                if not nullable:
                    return schema
                return _nullable(schema)
            options = [self.schema(m) for m in rest]
            if nullable:
                options.append({"type": "null"})
            return {"anyOf": options}
        if origin is Literal:
            values = list(get_args(hint))
            return {"type": _PLAIN[type(values[0])], "enum": values}
        if origin is list:
            return {"type": "array", "items": self.schema(get_args(hint)[0])}
        if origin is dict:
            key, value = get_args(hint)
            mapping: dict[str, Any] = {"type": "object", "additionalProperties": self.schema(value)}
            if get_origin(key) is Literal:
                mapping["propertyNames"] = {"enum": list(get_args(key))}
            return mapping
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            return {"type": "string", "enum": [member.value for member in hint]}
        if is_typeddict(hint):
            return self.ref(hint)
        if hint in _PLAIN:
            return {"type": _PLAIN[hint]}
        raise TypeError(f"no JSON Schema for {hint!r}")


def _not_required(hint: Any) -> bool:
    origin = get_origin(hint)
    if origin is typing.Annotated:
        return _not_required(get_args(hint)[0])
    return origin is NotRequired


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema or "allOf" in schema:
        return {"anyOf": [schema, {"type": "null"}]}
    if "enum" in schema:
        return {**schema, "type": [schema["type"], "null"], "enum": [*schema["enum"], None]}
    return {**schema, "type": [schema["type"], "null"]}
