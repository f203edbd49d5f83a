"""README.md and docs/ stay true of the tree: every link resolves inside the
repository, the configuration table names exactly the variables
smtpcheck/config.py reads, and every ``--option`` they mention exists."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

from cli.parser import build_parser
from smtpcheck import contract
from smtpcheck.config import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: Options the documents quote from other tools' command lines.
FOREIGN_OPTIONS = {
    "--check": "ruff format --check",
    "--worker-connections": "the gunicorn command line smtpcheck api runs",
    "--no-control-socket": "the gunicorn command line smtpcheck api runs",
}


def prose(path: Path) -> str:
    """The document without its fenced code blocks (shell examples, JSON)."""
    return re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)


def links(text: str) -> Iterator[str]:
    yield from re.findall(r"\]\(([^)\s]+)\)", text)  # [text](target)
    yield from re.findall(r"""<(?:img|a)\b[^>]*?\b(?:src|href)="([^"]+)\"""", text)


def test_every_link_resolves_inside_the_repository() -> None:
    wrong = []
    for path in DOCUMENTS:
        for target in links(prose(path)):
            if re.match(r"[a-z][a-z0-9+.-]*:|//", target, flags=re.I):
                wrong.append(f"{path.name}: {target} points outside the repository")
                continue
            local = target.split("#", 1)[0]
            if local and not (path.parent / local).resolve().is_relative_to(ROOT):
                wrong.append(f"{path.name}: {target} leaves the repository")
            elif local and not (path.parent / local).exists():
                wrong.append(f"{path.name}: {target} does not exist")
    assert not wrong


class Asked(dict[str, str]):
    """An empty environment that remembers every variable asked of it."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: set[str] = set()

    def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
        self.asked.add(key)
        return default


def test_the_configuration_table_is_what_config_reads() -> None:
    environ = Asked()
    Settings.from_env(environ)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    listed = set()
    for row in section.splitlines():
        if row.startswith("| `"):
            listed.update(re.findall(r"`([A-Z][A-Z0-9_]+)`", row.split("|")[1]))
    assert listed == environ.asked


def options(parser: argparse.ArgumentParser) -> Iterator[str]:
    for action in parser._actions:
        yield from action.option_strings
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                yield from options(command)


def test_every_option_the_documents_name_exists() -> None:
    known = set(options(build_parser())) | set(FOREIGN_OPTIONS)
    for path in DOCUMENTS:
        named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", path.read_text(encoding="utf-8")))
        assert named <= known, (path.name, sorted(named - known))


def test_architecture_names_every_module() -> None:
    """docs/architecture.md is the map a maintainer checks against the tree."""
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    unnamed = [
        f"{module.parent.name}/{module.name}"
        for package in ("cli", "smtpcheck", "service", "workers")
        for module in sorted((ROOT / package).glob("*.py"))
        if module.name != "__init__.py"
        and f"`{module.name}`" not in page
        and f"{package}/{module.name}" not in page
    ]
    assert not unnamed


def test_architecture_lists_every_redis_key_of_ours() -> None:
    """Each key name the contract defines is in the table of Redis keys besides RQ's."""
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    table = page.split("\n## Redis keys besides RQ's\n", 1)[1].split("\n## ", 1)[0]
    names = {
        value
        for name, value in vars(contract).items()
        if name.isupper() and isinstance(value, str) and value.startswith(contract.KEY_PREFIX)
    }
    assert names and not [name for name in sorted(names) if f"`{name}" not in table]
