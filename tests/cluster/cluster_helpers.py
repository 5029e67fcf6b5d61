"""Helpers of the cluster tests: the 3-node GPU site and golden-file comparison."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).with_name("data")
GOLDEN = ROOT / "tests" / "golden" / "cluster"
SITE = DATA / "site-3gpu.yaml"
UPDATE = os.environ.get("MLPLAT_UPDATE_GOLDEN") == "1"


def golden(name: str, text: str) -> None:
    """Compare with tests/golden/cluster/<name>; MLPLAT_UPDATE_GOLDEN=1 rewrites it."""
    path = GOLDEN / name
    if UPDATE or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if not UPDATE:
            pytest.fail(f"golden file {path} did not exist and was written: check it and commit it")
    assert text == path.read_text(), f"differs from {path} (MLPLAT_UPDATE_GOLDEN=1 to rewrite after review)"
