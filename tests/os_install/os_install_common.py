"""Paths and the canary hash shared by the phase 05 tests (a module of its own: several test
folders have a conftest.py, so `from conftest import ...` would be ambiguous)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures" / "os_install"
GOLDEN = ROOT / "tests" / "golden" / "os_install"
HASH_ENV = "MLPLAT_TEST_ROOT_HASH"
# A well-formed SHA-512 crypt string that is nobody's password; unique enough to grep for.
CANARY_HASH = "$6$mlplatcanary$CANARYf3a9c1d0e7b2mustnotappearinnotebooks0123456789abcdefghijklmnopqrstuv"
