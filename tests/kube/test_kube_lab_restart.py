"""The API server restarted in the middle of an apply of the offline bundle's Istio manifests (Kubeflow's
Istio, its CRDs and namespace, and Istio's Kiali/Grafana/Prometheus/Jaeger addons): the apply
retries through the outage and converges, and a re-apply then changes nothing.

Runs on a cluster of its own, because a restart leaves the namespace controller slow for a while.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest

import lab_support
from lab_support import start_cluster
from mlplat.kube import apply, client_from, load_manifests, summary

pytestmark = [pytest.mark.lab_cluster, pytest.mark.slow]


@pytest.fixture(scope="module")
def restart_lab(lab_binaries, tmp_path_factory):
    from mlplat.lab import cluster

    state = tmp_path_factory.mktemp("kube-restart-lab")
    info = start_cluster(lab_binaries, state, "r" + uuid.uuid4().hex[:5])
    yield info
    cluster.down(state, progress=lambda s: None)


def test_apply_converges_through_an_api_server_restart(restart_lab, istio_yaml):
    kube = client_from(str(restart_lab.kubeconfig))
    objs = load_manifests(istio_yaml)
    assert len(objs) > 70
    notes: list[tuple[float, str]] = []
    restart: dict = {}

    def restarter():
        time.sleep(0.5)  # the namespaces and CRDs are being applied by then
        restart["down"] = time.monotonic()
        lab_support.stop_apiserver(restart_lab.cluster_dir)
        time.sleep(0.5)
        lab_support.start_apiserver(restart_lab)
        restart["started"] = time.monotonic()

    th = threading.Thread(target=restarter)
    t0 = time.monotonic()
    th.start()
    results = apply(kube, objs, progress=False, note=lambda m: notes.append((time.monotonic(), m)))
    elapsed = time.monotonic() - t0
    th.join()
    failed = [r.message for r in results if not r.ok]
    assert not failed, failed
    assert summary(results).get("created", 0) >= len(objs) - 5  # a lost response may read as "unchanged"
    assert restart["down"] - t0 < elapsed, "the restart must fall inside the apply"
    # it said it was retrying, and why
    assert any("retrying" in m and ("refused" in m or "reset" in m or "restarting" in m) for _, m in notes) or \
        any("watching again" in m for _, m in notes), notes
    again = apply(kube, objs, progress=False)
    assert summary(again) == {"unchanged": len(objs)}, [r.message for r in again if r.changed or not r.ok]
    kube.close()
