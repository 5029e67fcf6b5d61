"""Shared test fixtures. Lab fixtures (real sshd hosts, the real control plane) live in
lab_fixtures.py and are imported here so that every test folder can use them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path | None:
    """The shared fixtures folder: $MLPLAT_SHARED, else ../shared beside the repository."""
    cand = os.environ.get("MLPLAT_SHARED") or str(ROOT.parent / "shared")
    p = Path(cand)
    return p if (p / "fixtures").is_dir() else None


@pytest.fixture(scope="session")
def shared() -> Path:
    p = shared_dir()
    if p is None:
        pytest.skip("shared fixtures not found: set MLPLAT_SHARED to the folder holding fixtures/ "
                    "(it sits beside the repository as ../shared)")
    return p


@pytest.fixture(scope="session")
def recorded(shared) -> Path:
    return shared / "fixtures" / "recorded"


try:  # the lab fixtures need root and sshd; without them their tests skip, the rest still runs
    from lab_fixtures import *  # noqa: F401,F403
except ImportError:
    pass
