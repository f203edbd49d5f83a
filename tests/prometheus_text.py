"""Reading samples out of a Prometheus text exposition, for the tests."""

from __future__ import annotations

import re


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample, labels in any order; AssertionError if absent."""
    for line in text.splitlines():
        if line.startswith(name + " "):  # a sample without labels
            found: dict[str, str] = {}
        elif line.startswith(name + "{"):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line[len(name) : line.rindex("}") + 1]))
        else:
            continue
        if found == labels:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name}{labels} in:\n{text}")


def sample_or_zero(text: str, name: str, **labels: str) -> float:
    """A counter that has not counted anything yet is absent: read it as 0."""
    try:
        return sample(text, name, **labels)
    except AssertionError:
        return 0.0
