"""README's outcome and reply-class tables, openapi.yaml and the contract
say the same words."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from smtpcheck.contract import OUTCOMES, REPLY_CLASSES

ROOT = Path(__file__).resolve().parents[1]


def table_codes(text: str, heading: str) -> list[str]:
    """The backquoted words in the first column of the table after ``heading``."""
    rows = text.split(heading, 1)[1].split("\n\n", 2)[1].splitlines()
    found: list[str] = []
    for row in rows[2:]:
        found += re.findall(r"`([a-z0-9_]+)`", row.split("|")[1])
    return found


def test_readme_outcome_table_is_the_contract():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert table_codes(readme, "## Outcome codes") == list(OUTCOMES)


def test_readme_names_every_reply_class():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert sorted(table_codes(readme, "every reply recorded in")) == sorted(REPLY_CLASSES)


def test_openapi_outcomes_are_the_contract():
    spec = yaml.safe_load((ROOT / "openapi.yaml").read_text(encoding="utf-8"))
    outcome = spec["components"]["schemas"]["CheckResult"]["properties"]["outcome"]
    enum = outcome.get("enum") or next(s["enum"] for s in outcome.get("anyOf", []) if "enum" in s)
    assert list(enum) == list(OUTCOMES)
