"""Fixtures of the phase-60 tests: a lab cluster of their own, the real training operator, and the
pods' logs served from a real CPU run of the workloads.

- ``validation_cluster`` (session): :func:`mlplat.lab.cluster.up` in a tmp folder with two KWOK
  nodes of 2 simulated GPUs each (so each job pod's ``nprocPerNode`` is 2, the same as the CPU
  run's ``torchrun --nproc_per_node=2``), and a params file pointing at it; no operator yet.
- ``validation_lab`` (session, on top): :func:`mlplat.lab.cluster.start_training_operator`, then
  :func:`mlplat.lab.workload_logs.prepare`, which runs the phase's workloads on this machine's CPU
  and registers one log per expected pod. TensorFlow runs for real when a Python with it is found
  (``$MLPLAT_TF_PYTHON``); otherwise the captured real TF run in ``tests/fixtures/training`` stands
  in (its SOURCES.md says how it was made).

Thresholds in the params are CPU-sized: two cores shared by four ranks cannot reach GPU figures,
and that is not what the lab proves. Names carry a unique suffix; everything is torn down.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "training"
SUFFIX = uuid.uuid4().hex[:5]
SIMULATED_GPUS = 2
#: CPU-sized thresholds: what a gloo run on 2 shared cores clears with a wide margin.
CPU_THRESHOLDS = {"min_busbw_gbps": 0.005, "min_scaling_efficiency": 0.1}


@dataclass
class ValidationLab:
    state: Path          # the lab cluster's state folder
    kubeconfig: Path
    params_path: Path
    binaries: dict
    logs: list[dict]     # what workload_logs.prepare served, one row per pod

    def write_params(self, path: Path, **validation) -> Path:
        """A copy of the lab's params with ``validation`` keys changed."""
        data = yaml.safe_load(self.params_path.read_text())
        data["validation"].update(validation)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path


def _binaries():
    from mlplat.lab import build

    try:
        return build.ensure_binaries(progress=lambda s: None)
    except build.LabBuildError as e:
        pytest.skip(f"lab binaries are not built and cannot be built here: {e}")


@dataclass
class ValidationCluster:
    state: Path
    kubeconfig: Path
    params_path: Path
    binaries: dict


@pytest.fixture(scope="session")
def validation_cluster(tmp_path_factory) -> ValidationCluster:
    """The lab cluster alone (no training operator yet) and its params."""
    if os.geteuid() != 0:
        pytest.skip("the lab cluster needs root")
    binaries = _binaries()
    from mlplat.lab import cluster

    base = tmp_path_factory.mktemp("validation-lab")
    state, kubeconfig = base / "cluster", base / "kubeconfig"
    hosts = [{"name": f"v-{SUFFIX}-{i}", "address": f"127.0.11.{i}", "roles": ["control-plane", "worker"] if i == 1
              else ["worker"], "gpus": 0} for i in (1, 2)]
    params = base / "params.yaml"
    params.write_text(yaml.safe_dump({
        "site": f"lab-{SUFFIX}",
        "os": {"family": "debian", "distro": "debian", "version": "12"},
        "hosts": hosts,
        "kubernetes": {"existing_kubeconfig": str(kubeconfig)},
        "validation": {**CPU_THRESHOLDS, "ddp_steps": 20, "nccl_env": {"NCCL_DEBUG": "INFO"}},
        "lab": {"state_dir": str(base), "nodes": "kwok", "simulated_gpus": SIMULATED_GPUS},
    }, sort_keys=False))
    nodes = [{"name": h["name"], "gpus": SIMULATED_GPUS, "roles": h["roles"]} for h in hosts]
    try:
        cluster.up(state, kubeconfig, nodes, binaries=binaries, progress=_quiet)
        yield ValidationCluster(state, kubeconfig, params, binaries)
    finally:
        try:
            cluster.stop_training_operator(state, progress=_quiet)
        finally:
            cluster.down(state, progress=_quiet)


def _quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="session")
def validation_lab(validation_cluster) -> ValidationLab:
    """The cluster with the real training operator and the pods' logs from a real CPU run."""
    try:
        import torch.distributed  # noqa: F401 - only whether it imports
    except Exception as e:  # noqa: BLE001 - ImportError, or a broken wheel
        pytest.skip(f"torch is not importable ({e}): the lab's CPU run needs it (pip install -e '.[train]')")
    from mlplat.lab import cluster, workload_logs

    c = validation_cluster
    cluster.start_training_operator(c.state, c.kubeconfig, binaries=c.binaries, progress=_quiet)
    logs = workload_logs.prepare(c.state, c.kubeconfig, c.params_path, tf_fallback=FIXTURES, progress=_quiet)
    return ValidationLab(c.state, c.kubeconfig, c.params_path, c.binaries, logs)


@pytest.fixture
def kube(validation_cluster):
    from mlplat.kube import client_from

    k = client_from(str(validation_cluster.kubeconfig))
    yield k
    k.close()
