"""Fixtures of the Kubernetes helper tests: a lab cluster of their own (real etcd, kube-apiserver,
controller manager and scheduler; KWOK nodes with nvidia.com/gpu), the offline bundle's manifests,
and a params file pointing at the cluster."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest
import yaml

import lab_support  # on sys.path by tests/conftest.py
from lab_support import lab_nodes, start_cluster

SUFFIX = uuid.uuid4().hex[:6]
TEST_LABEL = "mlplat.io/test"


@pytest.fixture(scope="session")
def lab_binaries():
    """The lab's binaries from the cache (or a build when Go is here); skips when impossible."""
    if os.geteuid() != 0:
        pytest.skip("the lab cluster needs root")
    try:
        from mlplat.lab import build
    except ImportError as e:  # pragma: no cover - the lab package is part of the repository
        pytest.skip(f"mlplat.lab is not importable: {e}")
    try:
        return build.ensure_binaries(progress=lambda s: None)
    except Exception as e:  # noqa: BLE001 - LabBuildError and friends: say why and skip
        if shutil.which("go") is None:
            pytest.skip(f"lab binaries are not cached and Go is missing: {e}")
        raise


@pytest.fixture(scope="session")
def kube_lab(lab_binaries, tmp_path_factory):
    """A lab cluster for this test folder (torn down at the end of the session)."""
    from mlplat.lab import cluster

    state = tmp_path_factory.mktemp("kube-lab")
    info = start_cluster(lab_binaries, state, SUFFIX)
    yield info
    cluster.down(state, progress=lambda s: None)


@pytest.fixture(scope="session")
def kube(kube_lab):
    from mlplat.kube import client_from

    k = client_from(str(kube_lab.kubeconfig))
    yield k
    k.close()


@pytest.fixture(scope="session")
def kf_root(shared, tmp_path_factory) -> Path:
    """The offline bundle's Kubeflow 26.03 manifests, unpacked."""
    if not (shared / lab_support.KUBEFLOW_TGZ).exists():
        pytest.skip(f"{shared / lab_support.KUBEFLOW_TGZ} not found")
    return lab_support.extract_kubeflow(shared, tmp_path_factory.mktemp("kubeflow"))


@pytest.fixture(scope="session")
def training_operator_yaml(kf_root) -> str:
    return lab_support.build(kf_root, lab_support.TRAINING_OPERATOR)


@pytest.fixture(scope="session")
def istio_yaml(kf_root, shared) -> str:
    addons = sorted((shared / lab_support.ISTIO_ADDONS).glob("*.yaml"))
    return "\n---\n".join([lab_support.build(kf_root, lab_support.ISTIO)] + [p.read_text() for p in addons])


@pytest.fixture(scope="session")
def params_file(kube_lab, tmp_path_factory) -> Path:
    """A site params file whose kubernetes section points at the lab cluster."""
    p = tmp_path_factory.mktemp("params") / "site.yaml"
    p.write_text(yaml.safe_dump({
        "site": "kube-tests",
        "hosts": [{"name": n["name"], "address": "127.0.0.1", "roles": n["roles"], "gpus": n["gpus"]}
                  for n in lab_nodes(SUFFIX)[:1]],
        "kubernetes": {"existing_kubeconfig": str(kube_lab.kubeconfig)},
    }))
    return p


@pytest.fixture
def test_ns(kube):
    """A fresh namespace with the test label; deleted afterwards (not waited for)."""
    from mlplat.kube import apply

    name = f"kt-{uuid.uuid4().hex[:8]}"
    [r] = apply(kube, [{"apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": name, "labels": {TEST_LABEL: SUFFIX}}}], progress=False)
    assert r.ok, r.message
    yield name
    kube.delete(kube.resource("Namespace", "v1"), name)
