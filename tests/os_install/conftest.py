"""Fixtures of the phase 05 tests: the test params (site-like and lab-like), a fixed root password
hash behind an environment variable (the canary: it must reach the files and nothing else)."""

from __future__ import annotations

from pathlib import Path

import pytest

from os_install_common import CANARY_HASH, FIX, HASH_ENV


@pytest.fixture
def root_hash(monkeypatch):
    monkeypatch.setenv(HASH_ENV, CANARY_HASH)
    return CANARY_HASH


@pytest.fixture
def site_params(root_hash):
    from mlplat.params import load_params

    return load_params(FIX / "site.yaml")


@pytest.fixture
def lab_params():
    from mlplat.params import load_params

    return load_params(FIX / "lab.yaml")


@pytest.fixture(scope="session")
def autoinstall_schema() -> Path:
    from mlplat.phases.os_install import SCHEMA_NAME, schema_path

    p = schema_path()
    if p is None:
        import shared_kit

        pytest.skip(shared_kit.missing_reason(f"fixtures/os-install/{SCHEMA_NAME}", "subiquity's autoinstall schema"))
    return p
