"""Shared test fixtures. Lab fixtures (real sshd hosts, the real control plane) live in
lab_fixtures.py and are imported here so that every test folder can use them."""

from __future__ import annotations

import os
from dataclasses import dataclass
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


@dataclass
class FullLab:
    """A lab as `mlplat lab up` makes it: SSH hosts, the control plane, and its params file."""

    state_dir: Path
    params: Path


@pytest.fixture(scope="session")
def lab(tmp_path_factory) -> FullLab:
    """The whole lab (2 hosts + cluster) through the same entry point as `mlplat lab up`, in its own
    state folder and 127.0.x block; taken down at the end of the session."""
    from lab_fixtures import lab_hosts_unavailable

    reason = lab_hosts_unavailable()
    if reason:
        pytest.skip(reason)
    from mlplat import lab as mlab
    from mlplat.lab import hosts as lab_hosts

    state = tmp_path_factory.mktemp("full-lab")
    try:
        params = mlab.up(state, hosts=2, network=lab_hosts.free_network(2, start=os.getpid() + 97))
        yield FullLab(state, params)
    finally:
        mlab.down(state)


try:  # the lab fixtures need root and sshd; without them their tests skip, the rest still runs
    from lab_fixtures import *  # noqa: F401,F403
except ImportError:
    pass
