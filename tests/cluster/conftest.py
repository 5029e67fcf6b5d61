"""Fixtures of the cluster tests (phases 30, 40, 99).

- ``kubeadm_bin``: the real kubeadm v1.34.4 from the lab's build cache
  (:func:`mlplat.lab.build.ensure_binaries`); skipped with the reason when it cannot be built.
- ``lab_site``: a lab cluster of its own for the session (real etcd, API server, controllers,
  scheduler; KWOK nodes named after the site's hosts, ``nvidia.com/gpu`` simulated) started with
  :func:`mlplat.lab.cluster.up` in a tmp folder, and a params file pointing at it in
  existing-cluster mode, the way ``mlplat lab up`` writes one. Torn down at the end.

No other test session or lab is touched: its own state folder, ports chosen free, node names and
site name carry a unique suffix.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

SUFFIX = uuid.uuid4().hex[:5]
SIMULATED_GPUS = 4
DATA = Path(__file__).with_name("data")


def _binaries():
    from mlplat.lab import build

    try:
        return build.ensure_binaries(progress=lambda s: None)
    except build.LabBuildError as e:
        pytest.skip(f"lab binaries are not built and cannot be built here: {e}")


@pytest.fixture(scope="session")
def kubeadm_bin() -> Path:
    return _binaries()["kubeadm"]


@dataclass
class LabSite:
    state: Path
    kubeconfig: Path
    params_path: Path
    hosts: list[dict]

    def params_data(self) -> dict:
        return yaml.safe_load(self.params_path.read_text())

    def write_params(self, path: Path, **changes) -> Path:
        """A copy of the site's params with top-level sections updated (dicts merged)."""
        data = self.params_data()
        for k, v in changes.items():
            if isinstance(v, dict) and isinstance(data.get(k), dict):
                data[k].update(v)
            elif v is None:
                data.pop(k, None)
            else:
                data[k] = v
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path


@pytest.fixture(scope="session")
def lab_site(tmp_path_factory) -> LabSite:
    if os.geteuid() != 0:
        pytest.skip("the lab cluster needs root")
    binaries = _binaries()
    from mlplat.lab import cluster

    state = tmp_path_factory.mktemp("cluster-lab")
    kubeconfig = state / "kubeconfig"
    hosts = [
        {"name": f"c-{SUFFIX}-1", "address": "127.0.10.1", "roles": ["control-plane", "worker"], "gpus": 0},
        {"name": f"c-{SUFFIX}-2", "address": "127.0.10.2", "roles": ["worker"], "gpus": 0},
    ]
    nodes = [{"name": h["name"], "gpus": SIMULATED_GPUS, "roles": h["roles"]} for h in hosts]
    cluster.up(state / "cluster", kubeconfig, nodes, binaries=binaries, progress=lambda s: None)
    params = state / "params.yaml"
    params.write_text(yaml.safe_dump({
        "site": f"lab-{SUFFIX}",
        "os": {"family": "debian", "distro": "debian", "version": "12"},
        "hosts": hosts,
        "kubernetes": {"existing_kubeconfig": str(kubeconfig)},
        "lab": {"state_dir": str(state), "nodes": "kwok", "simulated_gpus": SIMULATED_GPUS},
    }, sort_keys=False))
    try:
        yield LabSite(state, kubeconfig, params, hosts)
    finally:
        cluster.down(state / "cluster", progress=lambda s: None)


@pytest.fixture
def kube(lab_site):
    from mlplat.kube import client_from

    k = client_from(str(lab_site.kubeconfig))
    yield k
    k.close()


class WriteSpy:
    """Counts every API call that is not a read, made through :class:`mlplat.kube.Kube` (real calls;
    the spy only records them)."""

    def __init__(self, monkeypatch):
        from mlplat.kube.client import Kube

        self.writes: list[tuple[str, str, dict]] = []
        orig = Kube.request

        def request(kube, method, path, **kw):
            if method.upper() not in ("GET", "HEAD"):
                self.writes.append((method.upper(), path, kw.get("query") or {}))
            return orig(kube, method, path, **kw)

        monkeypatch.setattr(Kube, "request", request)

    def real_writes(self) -> list:
        """Writes that are not server-side dry runs."""
        return [w for w in self.writes if (w[2] or {}).get("dryRun") != "All"]


@pytest.fixture
def write_spy(monkeypatch) -> WriteSpy:
    return WriteSpy(monkeypatch)
