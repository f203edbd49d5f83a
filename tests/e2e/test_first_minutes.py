"""The first ten minutes of a newcomer, as the README tells them.

The README's curl helper runs in a real bash against a real service (gunicorn,
workers, redis-server) and a local SMTP server: a check prints its transcript,
and a refused one prints the problem+json error field by field, after which the
shell carries on.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import Client, Service, Targets

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"


def readme_helper() -> str:
    """The sh block the README marks as the check() helper, as written there."""
    text = README.read_text()
    marker = text.index("<!-- the check() helper:")
    block = re.search(r"```sh\n(.*?)```", text[marker:], re.S)
    assert block, "no sh block after the helper's marker"
    return block.group(1)


def test_the_readme_curl_helper_prints_transcripts_and_readable_errors(
    service: Service, targets: Targets, tmp_path: Path
) -> None:
    helper = readme_helper()
    assert "http://127.0.0.1:8025" in helper  # what make dev listens on ...
    helper = helper.replace("http://127.0.0.1:8025", service.url)  # ... here, a free port
    # Pasted in the repository, where make dev keeps its key.
    (tmp_path / ".smtpcheck").mkdir()
    (tmp_path / ".smtpcheck" / "api_key").write_text(f"{Client(service.url).api_key}\n")
    port = targets.plain.port
    script = "\n".join(
        [
            helper,
            f"""check '{{"host": "127.0.0.1", "port": {port}, "stop_after": "banner"}}'""",
            'echo "rc=$?"',
            """check '{"host": "127.0.0.1", "port": 1, "stop_after": "banner"}'""",
            'echo "rc=$?"',
            f"""check '{{"host": "::1", "port": {port}}}'""",
            'echo "rc=$?"',
            """check 'not json'""",
            'echo "rc=$?"',
            "echo still here",
        ]
    )
    env = {k: v for k, v in service.env.items() if not k.startswith("SMTPCHECK_")}
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    out, err = done.stdout, done.stderr
    assert done.returncode == 0, (out, err)
    assert out.splitlines()[-1] == "still here"
    assert [line for line in out.splitlines() if line.startswith("rc=")] == [
        "rc=0",
        "rc=1",
        "rc=1",
        "rc=1",
    ], (out, err)
    assert "<- 220 " in out and "=== connected to 127.0.0.1" in out
    assert "KeyError" not in err and "Traceback" not in err
    assert "422 Unprocessable Content" in err
    assert "  port: port 1 is not allowed" in err
    assert "SMTPCHECK_ALLOW_NETWORKS" in err  # a loopback target says how to allow it
    assert "400 Bad Request" in err


def test_readme_and_api_doc_name_every_endpoint_and_link_only_inside() -> None:
    spec = yaml.safe_load((REPO / "openapi.yaml").read_text())
    readme = README.read_text()
    api = (REPO / "docs" / "api.md").read_text()
    for path, operations in spec["paths"].items():
        shown = path.replace("{check_id}", "{id}")
        for method in operations:
            if method in ("get", "post", "delete", "put", "patch"):
                assert f"{method.upper()} {shown}" in readme or shown in readme, (method, path)
                assert shown in api, (method, path)
    from smtpcheck.contract import OUTCOMES

    for outcome in OUTCOMES:
        assert f"`{outcome}`" in api, outcome
    for doc in [README, *sorted((REPO / "docs").glob("*.md"))]:
        for link in re.findall(r"\]\(([^)]+)\)", doc.read_text()):
            if link.startswith(("http://", "https://", "#", "mailto:")):
                continue
            assert (doc.parent / link.split("#")[0]).exists(), (doc.name, link)
            assert (doc.parent / link).resolve().is_relative_to(REPO), (doc.name, link)
