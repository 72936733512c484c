"""schemathesis against the ingress's own OpenAPI document: no 500s, no response outside the schema."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from libs.devstack.stack import Stack

pytestmark = pytest.mark.e2e


def test_the_api_keeps_to_its_own_schema(stack: Stack, api_key: str, tmp_path: Path) -> None:
    run_schemathesis(stack, api_key, tmp_path)


def test_the_management_api_keeps_to_its_own_schema_for_a_management_key(stack: Stack, tmp_path: Path) -> None:
    """The management routes with the key they are for (with an inference key they only answer 403)."""
    account_id, _ = stack.create_account(credits="10")
    # DELETE /v1/keys/{id} revokes: the key stays on the record (shown with "revoked": true, as the listing
    # shows it), so schemathesis's "a deleted resource is a 404" check does not apply to it.
    run_schemathesis(stack, stack.create_management_key(account_id), tmp_path, "^/v1/(keys|account|generation)",
                     ["--exclude-checks", "use_after_free"])  # fmt: skip


def run_schemathesis(
    stack: Stack, api_key: str, tmp_path: Path, paths: str | None = None, options: list[str] | None = None
) -> None:
    """schemathesis against the stack's OpenAPI document (only ``paths``, a regular expression, when given)."""
    base = stack.config.api_base.removesuffix("/v1")
    only = [*(["--include-path-regex", paths] if paths else []), *(options or [])]
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("schemathesis")),
            "--config-file",
            str(Path(__file__).with_name("schemathesis.toml")),
            "run",
            f"{base}/openapi.json",
            "--header",
            f"Authorization: Bearer {api_key}",
            "--checks",
            "all",
            "--max-examples",
            "40",
            # One worker: schemathesis 4.32's generator caches are not safe across threads (KeyError seen).
            "--workers",
            "1",
            "--request-timeout",
            "30",
            "--report-dir",
            str(tmp_path),
            "--no-color",
            *only,
        ],
        capture_output=True,
        text=True,
        timeout=500,
        check=False,
    )
    failures = result.stdout.split("FAILURES", 1)[-1].split("SUMMARY", 1)[0]
    assert result.returncode == 0, failures[:12000] + result.stderr[-2000:]
