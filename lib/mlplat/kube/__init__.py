"""Kubernetes helpers: kubeconfig, server-side apply / dry-run / diff, waits by watch, tables.

Built on the official ``kubernetes`` client's configuration loader and transport. Knows nothing
of SSH hosts (``mlplat.hosts``); phases combine the two.

    kube = client_from(params)                       # or a kubeconfig path
    results = apply(kube, load_manifests(text))      # list[StepResult], one per object
    plan = apply(kube, objs, dry_run=True)           # server-side dry run, r.diff per object
    wait_for(kube, "Deployment", "istiod", "istio-system", timeout=300)
    pods_table(kube, "kubeflow"); events_table(kube, "kubeflow"); pod_logs(kube, "pod", "ns")
"""

from .apply import NO_RETRY, Retry, apply, summary
from .client import Kube, KubeError, client_from
from .diagnose import Finding
from .discovery import NoKindMatch, Resource
from .manifests import ManifestError, diff, kubectl_binary, kustomize, load_manifests, normalize, ref
from .tables import events_table, nodes_table, pod_logs, pods_table
from .wait import WaitFailed, WaitTimeout, wait_for

__all__ = [
    "Finding", "Kube", "KubeError", "ManifestError", "NO_RETRY", "NoKindMatch", "Resource", "Retry", "WaitFailed",
    "WaitTimeout", "apply", "client_from", "diff", "events_table", "kubectl_binary", "kustomize", "load_manifests",
    "nodes_table", "normalize", "pod_logs", "pods_table", "ref", "summary", "wait_for",
]
