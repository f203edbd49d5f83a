"""Parsing SMTPCHECK_API_KEYS and reading bearer tokens."""

from __future__ import annotations

import hashlib

import pytest

from service.apikeys import ApiKeys, bearer_token
from smtpcheck.config import ConfigError


def test_plain_and_hashed_keys() -> None:
    digest = hashlib.sha256(b"bob-key").hexdigest().upper()
    keys = ApiKeys.parse(" alice:alice-key , bob:sha256:" + digest + ",")

    assert keys.identify("alice-key") == "alice"
    assert keys.identify("bob-key") == "bob"
    assert keys.identify("sha256:" + digest) is None
    assert keys.identify("") is None
    assert all(len(digest) == 32 for _, digest in keys.digests)  # only digests are kept


def test_a_key_may_contain_colons() -> None:
    assert ApiKeys.parse("svc:a:b:c").identify("a:b:c") == "svc"


@pytest.mark.parametrize(
    "raw", ["alice", "alice:", ":key", "al ice:key", "alice:k1,alice:k2", "-x:key"]
)
def test_bad_entries_are_config_errors(raw: str) -> None:
    with pytest.raises(ConfigError) as raised:
        ApiKeys.parse(raw)

    assert raised.value.variable == "SMTPCHECK_API_KEYS"


def test_empty_means_no_keys() -> None:
    assert not ApiKeys.parse("")
    assert not ApiKeys.parse(" , ")


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer   abc ", "abc"),
        ("Bearer", None),
        ("Basic abc", None),
        ("abc", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token
