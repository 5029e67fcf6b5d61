"""Shared test fixtures. Lab fixtures (real sshd hosts, the real control plane) live in
lab_fixtures.py and are imported here so that every test folder can use them."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# tests/kube/lab_support.py: the Kubernetes test helpers (the API server restart, waiting for a
# webhook to take effect), imported by tests/kube, tests/lab and tests/kubeflow.
sys.path.insert(0, str(Path(__file__).resolve().parent / "kube"))


def shared_dir() -> Path | None:
    """The shared fixtures folder: $MLPLAT_SHARED, else ../shared beside the repository."""
    import shared_kit

    p = shared_kit.find("fixtures")
    return p.parent if p is not None and p.is_dir() else None


@pytest.fixture(scope="session")
def shared() -> Path:
    import shared_kit

    return shared_kit.require("fixtures", "the shared fixtures folder").parent


@pytest.fixture(scope="session")
def offline_bundle() -> Path:
    """The shared kit's offline bundle (flannel, device plugin, Istio add-ons, Kubeflow manifests),
    which phases 30-60 read when kubeflow.bundle is unset; skips naming where it was looked for.
    Lab tests use the mark ``shared_kit.needs_offline_bundle`` instead: a mark is decided before
    any fixture, so no lab is brought up for a test that would skip."""
    import shared_kit

    return shared_kit.require(shared_kit.BUNDLE, "the offline bundle")


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
