"""Fixtures for the deployment artefacts: the Dockerfile and the Helm chart."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.helm_sdk import HelmSDK

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "smtpcheck"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def helm_sdk() -> Iterator[HelmSDK]:
    """Helm's Go SDK for the chart, in a child process stopped at the end."""
    if importlib.util.find_spec("helm_python") is None:
        pytest.skip("helm-python-sdk is not installed (no wheel for this platform?)")
    sdk = HelmSDK(CHART, cwd=REPO)
    try:
        yield sdk
    finally:
        sdk.close()
