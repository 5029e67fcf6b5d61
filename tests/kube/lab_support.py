"""Helpers for the Kubernetes integration tests: the offline bundle's
manifests, restarting only the lab's kube-apiserver, and waiting for a just-written (or deleted)
admission webhook to take effect.

``mlplat.lab.cluster`` has no call that restarts one component (kwokctl v0.8.0 can only stop or
start the whole cluster), so :func:`restart_apiserver` does it from kwokctl's own records: the
component's binary, arguments and work directory in ``kwok.yaml``, its pid file, its log file.
The new pid goes back into the pid file, so ``cluster.down`` stops the new process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import yaml

KUBEFLOW_TGZ = "fixtures/offline-bundle/kubeflow-manifests-26.03.tar.gz"
ISTIO_ADDONS = "fixtures/offline-bundle/istio-1.28.0-addons"

TRAINING_OPERATOR = ["common/kubeflow-namespace/base", "applications/training-operator/upstream/overlays/kubeflow"]
# The oauth2-proxy overlay (example/kustomization.yaml's choice) puts a Sidecar into namespace
# kubeflow, so that namespace comes along.
ISTIO = ["common/istio/istio-crds/base", "common/istio/istio-namespace/base",
         "common/istio/istio-install/overlays/oauth2-proxy", "common/kubeflow-namespace/base"]


def extract_kubeflow(shared: Path, dest: Path) -> Path:
    """Unpack the Kubeflow manifests of the offline bundle once; returns their root folder."""
    root = dest / "kubeflow-manifests-26.03"
    if not root.exists():
        with tarfile.open(shared / KUBEFLOW_TGZ) as t:
            t.extractall(dest, filter="data")
    return root


def build(root: Path, paths: list[str]) -> str:
    """kustomize builds of ``paths`` under ``root``, joined as one multi-document YAML text."""
    from mlplat.kube import kustomize

    return "\n---\n".join(kustomize(root / p) for p in paths)


def _apiserver(cluster_dir: Path) -> dict:
    docs = list(yaml.safe_load_all((cluster_dir / "kwok.yaml").read_text()))
    conf = next(d for d in docs if d and d.get("kind") == "KwokctlConfiguration")
    return next(c for c in conf["components"] if c["name"] == "kube-apiserver")


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def stop_apiserver(cluster_dir: Path, sig: int = signal.SIGTERM, timeout: float = 2) -> None:
    """Stop the lab's kube-apiserver (the pid in kwokctl's pid file, checked by command line): SIGTERM,
    then SIGKILL after ``timeout`` seconds (it stops listening at once but can linger ~30 s in its
    graceful shutdown; a kubelet would also kill it after its grace period). Keep the whole outage
    well under 10 s: kube-controller-manager and kube-scheduler exit when they cannot renew their
    leader lease for 10 s, and nothing in the lab restarts them."""
    pid_file = Path(cluster_dir) / "pids" / "kube-apiserver.pid"
    pid = int(pid_file.read_text().strip())
    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    if "kube-apiserver" not in cmd:
        raise RuntimeError(f"pid {pid} in {pid_file} is not kube-apiserver: {cmd!r}")
    os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.05)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


def start_apiserver(info) -> int:
    """Start kube-apiserver again as kwokctl did (same binary, arguments, work dir, log file), inside
    the lab cluster's network namespace when it has one (``cluster.netns_popen``)."""
    from mlplat.lab import cluster

    cluster_dir = Path(info.cluster_dir)
    comp = _apiserver(cluster_dir)
    argv = [comp["binary"], *comp.get("args", [])]
    kw = dict(cwd=comp.get("workDir") or cluster_dir, stdin=subprocess.DEVNULL, start_new_session=True)
    with (cluster_dir / "logs" / "kube-apiserver.log").open("ab") as log:
        if hasattr(cluster, "netns_popen"):
            proc = cluster.netns_popen(info.state_dir, argv, stdout=log, stderr=log, **kw)
        else:
            proc = subprocess.Popen(argv, stdout=log, stderr=log, **kw)
    (cluster_dir / "pids" / "kube-apiserver.pid").write_text(str(proc.pid))
    return proc.pid


def restart_apiserver(info, down_for: float = 0.5) -> int:
    """Stop kube-apiserver, keep it down ``down_for`` seconds, start it again; returns the new pid."""
    stop_apiserver(info.cluster_dir)
    time.sleep(down_for)
    return start_apiserver(info)


def _webhook_names(hook) -> list[str]:
    if isinstance(hook, str):
        return [hook]
    names = []
    for w in hook.get("webhooks") or []:
        if w.get("sideEffects") not in ("None", "NoneOnDryRun"):
            # the API server refuses dry-run requests that would call such a webhook instead of calling it
            raise ValueError(f"webhook {w.get('name')!r} has sideEffects {w.get('sideEffects')!r}: dry-run "
                             f"requests do not call it, so they cannot tell whether it is active")
        names.append(w["name"])
    if not names:
        raise ValueError(f"no webhooks in {hook.get('metadata', {}).get('name')!r}")
    return names


def wait_webhook_active(kube, namespace: str, hook, active: bool = True, timeout: float = 30,
                        interval: float = 0.1, expect: str = "") -> tuple[str, float]:
    """Wait until the API server applies (``active``) or no longer applies (``not active``) the
    validating webhook(s) of ``hook`` (a ValidatingWebhookConfiguration dict, or one webhook's name)
    to ConfigMap creates in ``namespace``.

    kube-apiserver learns of a webhook configuration through its informer a moment after the write
    (and stops calling it a moment after the delete), so a test that registers one and at once
    expects a request to be refused (or deletes it and expects success) can race it. This repeats a
    dry-run ConfigMap create (``dryRun=All``: nothing is stored; webhooks declaring sideEffects
    None/NoneOnDryRun are still called) every ``interval`` s until it is refused by one of these
    webhooks (a call failure, ``failed calling webhook "<name>"``, or its denial; with ``expect``,
    the message must also contain that text), or, for ``active=False``, until it succeeds. Any other
    outcome (an error from something else) keeps it waiting. ``kube`` is a :class:`mlplat.kube.Kube`
    or a ``kubernetes`` ApiClient. Returns (the refusal's message, or "" when inactive; seconds the
    deciding request took); raises AssertionError after ``timeout`` s, naming the last outcome."""
    from mlplat.kube import KubeError
    from mlplat.kube.client import Kube

    if not isinstance(kube, Kube):
        kube = Kube(kube)
    names = _webhook_names(hook)
    marks = [f'failed calling webhook "{n}"' for n in names] + [f'admission webhook "{n}" denied' for n in names]
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "webhook-probe-"}}
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while True:
        t0 = time.monotonic()
        try:
            kube.request("POST", f"/api/v1/namespaces/{namespace}/configmaps", query={"dryRun": "All"}, body=body)
        except KubeError as e:
            took = time.monotonic() - t0
            last = f"refused: {e}"
            if active and any(m in e.message for m in marks) and expect in e.message:
                return e.message, took
        else:
            took = time.monotonic() - t0
            last = "allowed"
            if not active:
                return "", took
        if time.monotonic() >= deadline:
            state = "applied" if active else "no longer applied"
            raise AssertionError(f"webhook {', '.join(names)} not {state} to ConfigMap creates in {namespace} "
                                 f"within {timeout:g} s; last dry-run create: {last}")
        time.sleep(interval)


def lab_nodes(suffix: str) -> list[dict]:
    return [{"name": f"kt-cp-{suffix}", "gpus": 0, "roles": ["control-plane"]},
            {"name": f"kt-gpu1-{suffix}", "gpus": 8, "roles": ["worker"]},
            {"name": f"kt-gpu2-{suffix}", "gpus": 4, "roles": ["worker"]}]


def start_cluster(binaries, state: Path, suffix: str):
    from mlplat.lab import cluster

    return cluster.up(state, state / "kubeconfig", lab_nodes(suffix), binaries=binaries, progress=lambda s: None)
