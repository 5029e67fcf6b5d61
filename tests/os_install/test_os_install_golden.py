"""Golden files: what phase 05 writes for the test params, byte for byte after sanitizing (the
root password hash replaced by a placeholder; the files hold no dates or run ids by design).
Regenerate after an intended change with `MLPLAT_UPDATE_GOLDEN=1 pytest tests/os_install/test_os_install_golden.py`
and review the diff."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from os_install_common import CANARY_HASH, FIX, GOLDEN
from mlplat.phases import os_install as oi

CASES = {"site": "rocky-9,centos-7,ubuntu-22.04,ubuntu-24.04", "lab": "rocky-9,centos-7,ubuntu-24.04"}
PLACEHOLDER = "<ROOT_PASSWORD_HASH>"


def sanitize(text: str) -> str:
    return text.replace(CANARY_HASH, PLACEHOLDER)


def _generate(params, out: Path, targets: str) -> dict[str, str]:
    results = (oi.write_files(params, "kickstart", out, targets, base_dir=FIX)
               + oi.write_files(params, "autoinstall", out, targets, base_dir=FIX)
               + oi.write_boot_args(params, out, targets))
    assert all(r.ok for r in results), [r.message for r in results if not r.ok]
    root = out / "os-install"
    return {p.relative_to(root).as_posix(): sanitize(p.read_text()) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("which", sorted(CASES))
def test_generated_files_match_golden(which, request, tmp_path, autoinstall_schema):
    params = request.getfixturevalue(f"{which}_params")
    got = _generate(params, tmp_path, CASES[which])
    gold = GOLDEN / "files" / which
    if os.environ.get("MLPLAT_UPDATE_GOLDEN"):
        for rel, text in got.items():
            (gold / rel).parent.mkdir(parents=True, exist_ok=True)
            (gold / rel).write_text(text)
        for p in gold.rglob("*"):
            if p.is_file() and p.relative_to(gold).as_posix() not in got:
                p.unlink()
    want = {p.relative_to(gold).as_posix(): p.read_text() for p in sorted(gold.rglob("*")) if p.is_file()}
    assert sorted(got) == sorted(want), "file set changed (MLPLAT_UPDATE_GOLDEN=1 to accept)"
    for rel in want:
        assert got[rel] == want[rel], f"{which}/{rel} differs from the golden file (MLPLAT_UPDATE_GOLDEN=1 to accept)"
    assert not any(CANARY_HASH in t for t in want.values())


def test_generation_is_reproducible(site_params, tmp_path):
    a = _generate(site_params, tmp_path / "a", "rocky-9")
    b = _generate(site_params, tmp_path / "b", "rocky-9")
    assert a == b
