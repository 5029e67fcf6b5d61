"""Fixtures for the phase-60 training tests: the torch marker, torch availability, the
Kubeflow manifests of the offline bundle. Helpers live in training_helpers.py."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest


def pytest_configure(config):
    # Also to be listed in pyproject.toml's markers; registering here keeps --strict-markers happy.
    config.addinivalue_line("markers", "torch: runs the workloads with real torch (CPU, gloo); "
                                       "skipped when torch is not importable")


def torch_available() -> tuple[bool, str]:
    try:
        import torch.distributed as dist
    except Exception as e:  # ImportError, or a broken CUDA-only wheel failing at import
        return False, f"torch is not importable here ({type(e).__name__}: {e}); install it with the project's setup"
    if not dist.is_available() or not dist.is_gloo_available():
        return False, "this torch build has no torch.distributed gloo backend"
    return True, ""


@pytest.fixture(scope="session")
def torch_ok():
    ok, why = torch_available()
    if not ok:
        pytest.skip(why)


@pytest.fixture(scope="session")
def kubeflow_manifests(shared, tmp_path_factory) -> Path:
    """The offline bundle's Kubeflow 26.03 manifests, extracted once per session."""
    tgz = shared / "fixtures" / "offline-bundle" / "kubeflow-manifests-26.03.tar.gz"
    if not tgz.is_file():
        pytest.skip(f"offline bundle not found at {tgz}")
    dest = tmp_path_factory.mktemp("kubeflow-manifests")
    with tarfile.open(tgz) as tar:
        members = [m for m in tar.getmembers()
                   if "/applications/training-operator/" in m.name or "/applications/trainer/" in m.name]
        tar.extractall(dest, members=members, filter="data")
    roots = [p for p in dest.iterdir() if p.is_dir()]
    assert len(roots) == 1, f"unexpected bundle layout: {roots}"
    return roots[0]



@pytest.fixture(scope="session")
def without_numpy(tmp_path_factory) -> dict:
    """Environment additions that make `import numpy` fail in a child process: slim training
    images may lack numpy (torch does not require it), so the workloads must not need it."""
    shim = tmp_path_factory.mktemp("no-numpy")
    (shim / "numpy").mkdir()
    (shim / "numpy" / "__init__.py").write_text("raise ModuleNotFoundError('numpy hidden by the test', name='numpy')\n")
    import os

    path = os.pathsep.join(p for p in (str(shim), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path}
