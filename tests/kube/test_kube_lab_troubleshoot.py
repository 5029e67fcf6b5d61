"""90_troubleshoot against the lab cluster, no mocks: a webhook whose service is missing blocks creates
and is found, left alone without confirm, and removed with it; a namespace held in Terminating by
a custom resource whose finalizer's controller is gone is found, explained, left alone without
confirm (nothing changes: compared before/after) and finalized with it; a Pending GPU pod gets the
scheduler's reason; the notebook itself runs under papermill.
"""

from __future__ import annotations

import json
import uuid

import papermill
import pytest

from lab_support import wait_webhook_active
from mlplat.kube import KubeError, apply, wait_for
from mlplat.phases import troubleshoot as phase
from mlplat.report import hint_for

pytestmark = pytest.mark.lab_cluster

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def _snapshot(kube, refs) -> dict:
    """resourceVersion (or absence) of each (kind, apiVersion, namespace, name)."""
    out = {}
    for kind, api, ns, name in refs:
        o = kube.get_or_none(kube.resource(kind, api).path(ns, name))
        out[(kind, ns, name)] = None if o is None else o["metadata"]["resourceVersion"]
    return out


def _webhook(ns: str) -> dict:
    return {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": f"stale-{ns}"},
            "webhooks": [{
                "name": f"deny.{ns}.mlplat.io", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                "failurePolicy": "Fail", "timeoutSeconds": 2,
                "clientConfig": {"service": {"name": "missing-svc", "namespace": ns, "path": "/validate"}},
                "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                           "resources": ["configmaps"]}],
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}]}


def _create_cm(kube, ns, name):
    return kube.request("POST", kube.resource("ConfigMap", "v1").path(ns),
                        body={"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}})


def test_stale_webhook_is_found_and_removed_only_on_confirm(kube, params_file, test_ns):
    hook = _webhook(test_ns)
    assert apply(kube, [hook], progress=False)[0].ok
    wait_webhook_active(kube, test_ns, hook)  # the API server applies it a moment after the write
    with pytest.raises(KubeError) as e:
        _create_cm(kube, test_ns, "before")
    assert "failed calling webhook" in e.value.message and 'service "missing-svc" not found' in e.value.message
    assert "90_troubleshoot" in hint_for(str(e.value))
    refs = [("ValidatingWebhookConfiguration", "admissionregistration.k8s.io/v1", None, hook["metadata"]["name"])]

    # report only (apply mode, no confirm): found, explained, nothing changed
    before = _snapshot(kube, refs)
    phase.setup(params_file=str(params_file), mode="apply", confirm=False)
    table = phase.stale_webhooks()
    row = table.frame[table.frame["object"] == f"ValidatingWebhookConfiguration stale-{test_ns}"]
    assert len(row) == 1
    assert 'service "missing-svc" in namespace' in row.iloc[0]["blockers"] and "does not exist" in row.iloc[0]["blockers"]
    assert "failurePolicy: Fail" in row.iloc[0]["problem"] and "CREATE configmaps" in row.iloc[0]["problem"]
    assert "confirm: yes" in row.iloc[0]["fix"]
    acted = phase.remove_stale_webhooks()
    assert set(acted.frame["status"]) == {"skipped"} and not acted.frame["changed"].any()
    assert _snapshot(kube, refs) == before

    # plan mode with confirm: still nothing
    phase.setup(params_file=str(params_file), mode="plan", confirm=True)
    phase.stale_webhooks()
    phase.remove_stale_webhooks()
    assert _snapshot(kube, refs) == before

    # apply + confirm: removed, and creates work again
    phase.setup(params_file=str(params_file), mode="apply", confirm=True)
    phase.stale_webhooks()
    acted = phase.remove_stale_webhooks()
    mine = acted.frame[acted.frame["message"].str.contains(f"stale-{test_ns}")]
    assert list(mine["status"]) == ["changed"]
    assert _snapshot(kube, refs)[refs[0][0], None, refs[0][3]] is None
    wait_webhook_active(kube, test_ns, hook, active=False)  # ... and stops a moment after the delete
    assert _create_cm(kube, test_ns, "after")["metadata"]["name"] == "after"
    again = phase.stale_webhooks()
    assert f"stale-{test_ns}" not in " ".join(again.frame["object"])


def _stuck_namespace(kube, suffix):
    """A namespace held in Terminating: a CRD, a custom resource in the namespace with a finalizer
    that no controller will ever remove, then the namespace deleted."""
    group = f"t{suffix}.mlplat.io"
    ns = f"kt-stuck-{suffix}"
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": f"widgets.{group}"},
           "spec": {"group": group, "scope": "Namespaced",
                    "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
                    "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                        "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]}}
    objs = [crd, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
            {"apiVersion": f"{group}/v1", "kind": "Widget",
             "metadata": {"name": "w1", "namespace": ns, "finalizers": [f"{group}/protect"]}}]
    results = apply(kube, objs, progress=False)
    assert all(r.ok for r in results), [r.message for r in results]
    kube.delete(kube.resource("Namespace", "v1"), ns)

    def held(obj):
        conds = {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}
        ok = conds.get("NamespaceFinalizersRemaining", {}).get("status") == "True"
        return ok, "waiting for the namespace controller to report the remaining finalizer"

    wait_for(kube, "Namespace", ns, condition=held, timeout=60, progress=False)
    return ns, group


def test_terminating_namespace_is_explained_and_finalized_only_on_confirm(kube, params_file):
    suffix = uuid.uuid4().hex[:6]
    ns, group = _stuck_namespace(kube, suffix)
    refs = [("Namespace", "v1", None, ns), ("Widget", f"{group}/v1", ns, "w1")]
    before = _snapshot(kube, refs)
    assert all(before.values())

    phase.setup(params_file=str(params_file), mode="apply", confirm=False)
    table = phase.terminating_namespaces()
    row = table.frame[table.frame["object"] == f"Namespace {ns}"]
    assert len(row) == 1
    blockers = row.iloc[0]["blockers"]
    assert f"Widget w1 finalizers {group}/protect" in blockers
    assert f"finalizers remain: {group}/protect (1 objects)" in blockers
    assert f"widgets.{group}" in blockers  # the NamespaceContentRemaining condition
    assert f"owns {group}/protect" in row.iloc[0]["fix"] and "confirm: yes" in row.iloc[0]["fix"]
    acted = phase.finalize_namespaces()
    assert set(acted.frame["status"]) == {"skipped"}
    assert "finalize subresource" in " ".join(acted.frame["message"])
    assert _snapshot(kube, refs) == before, "without confirm nothing may change"

    phase.setup(params_file=str(params_file), mode="apply", confirm=True)
    phase.terminating_namespaces()
    acted = phase.finalize_namespaces()
    mine = acted.frame[acted.frame["message"].str.contains(f"namespace {ns}:")]
    assert list(mine["status"]) == ["changed"], acted.frame.to_dict("records")
    msg = mine.iloc[0]["message"]
    assert f"removed finalizers {group}/protect from Widget {ns}/w1" in msg and f"namespace {ns} is gone" in msg
    assert _snapshot(kube, refs) == {("Namespace", None, ns): None, ("Widget", ns, "w1"): None}
    again = phase.terminating_namespaces()
    assert f"Namespace {ns}" not in set(again.frame["object"])
    kube.delete(kube.resource("CustomResourceDefinition"), f"widgets.{group}")


def test_namespace_blocked_by_an_unavailable_api_is_finalized_on_confirm(kube, params_file):
    """The metrics.k8s.io case: an APIService without a backend makes discovery fail, so the
    namespace controller cannot finish any namespace; only the finalize subresource frees it."""
    suffix = uuid.uuid4().hex[:6]
    group, ns = f"metrics.t{suffix}.mlplat.io", f"kt-api-{suffix}"
    api_svc = {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
               "metadata": {"name": f"v1beta1.{group}"},
               "spec": {"group": group, "version": "v1beta1", "groupPriorityMinimum": 100, "versionPriority": 100,
                        "insecureSkipTLSVerify": True,
                        "service": {"name": "no-backend", "namespace": "default", "port": 443}}}
    ares = kube.resource("APIService", "apiregistration.k8s.io/v1")
    try:
        objs = [api_svc, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
                {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": ns}}]
        assert all(r.ok for r in apply(kube, objs, progress=False))
        kube.delete(kube.resource("Namespace", "v1"), ns)

        def discovery_failed(obj):
            conds = {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}
            return conds.get("NamespaceDeletionDiscoveryFailure", {}).get("status") == "True", "not yet"

        wait_for(kube, "Namespace", ns, condition=discovery_failed, timeout=60, progress=False)
        refs = [("Namespace", "v1", None, ns)]
        before = _snapshot(kube, refs)

        phase.setup(params_file=str(params_file), mode="apply", confirm=False)
        table = phase.terminating_namespaces()
        row = table.frame[table.frame["object"] == f"Namespace {ns}"].iloc[0]
        assert f"API discovery failed for {group}/v1beta1" in row["blockers"]
        assert f"APIService v1beta1.{group} unavailable (ServiceNotFound" in row["blockers"]
        assert f"restore or delete the unavailable APIService(s) v1beta1.{group}" in row["fix"]
        phase.finalize_namespaces()
        assert _snapshot(kube, refs) == before

        phase.setup(params_file=str(params_file), mode="apply", confirm=True)
        phase.terminating_namespaces()
        acted = phase.finalize_namespaces()
        msg = " ".join(acted.frame["message"])
        assert f"finalized namespace {ns}: PUT finalize with spec.finalizers emptied (was: kubernetes)" in msg
        assert _snapshot(kube, refs) == {("Namespace", None, ns): None}
    finally:
        kube.delete(ares, api_svc["metadata"]["name"])


def test_pending_gpu_pod_gets_the_schedulers_reason(kube, params_file, test_ns):
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "greedy", "namespace": test_ns},
           "spec": {"containers": [{"name": "c", "image": "busybox:1.36",
                                    "resources": {"limits": {"nvidia.com/gpu": "64"}}}]}}
    assert apply(kube, [pod], progress=False)[0].ok

    def unschedulable(o):
        c = {x["type"]: x for x in o.get("status", {}).get("conditions", [])}.get("PodScheduled", {})
        return c.get("reason") == "Unschedulable", c.get("message", "not yet tried")

    wait_for(kube, "Pod", "greedy", test_ns, condition=unschedulable, timeout=30, progress=False)
    phase.setup(params_file=str(params_file), mode="plan")
    table = phase.pending_gpu_pods()
    row = table.frame[table.frame["object"] == f"Pod {test_ns}/greedy"].iloc[0]
    assert "wants 64 nvidia.com/gpu" in row["problem"] and "Insufficient nvidia.com/gpu" in row["problem"]
    assert "not enough free nvidia.com/gpu" in row["fix"]
    assert "allocatable nvidia.com/gpu: 12" in table.title


def test_image_pull_failure_is_reported_with_its_image(kube, params_file, test_ns):
    # No kubelet pulls images under KWOK, so the container status a kubelet would write is written
    # through the status subresource of a pod no node will take (KWOK leaves unscheduled pods alone).
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "pull", "namespace": test_ns},
           "spec": {"nodeSelector": {"mlplat.io/no-such-node": "x"},
                    "containers": [{"name": "c", "image": "registry.invalid/team/app:1.0"}]}}
    assert apply(kube, [pod], progress=False)[0].ok
    kube.request("PATCH", kube.resource("Pod", "v1").path(test_ns, "pull", "status"),
                 content_type="application/merge-patch+json", body={"status": {"containerStatuses": [{
                     "name": "c", "image": "registry.invalid/team/app:1.0", "imageID": "", "ready": False,
                     "restartCount": 0, "state": {"waiting": {
                         "reason": "ImagePullBackOff",
                         "message": 'Back-off pulling image "registry.invalid/team/app:1.0": dial tcp: lookup '
                                    "registry.invalid: no such host"}}}]}})
    phase.setup(params_file=str(params_file), mode="plan")
    table = phase.image_pull_failures()
    row = table.frame[table.frame["object"] == f"Pod {test_ns}/pull"].iloc[0]
    assert "ImagePullBackOff" in row["problem"] and "registry.invalid/team/app:1.0" in row["problem"]
    assert "pre-load registry.invalid/team/app:1.0" in row["fix"]


def test_notebook_runs_in_plan_mode(kube_lab, params_file, tmp_path):
    out = tmp_path / "90.ipynb"
    papermill.execute_notebook(str(ROOT / "notebooks" / "90_troubleshoot.ipynb"), str(out),
                               parameters={"params_file": str(params_file), "run_dir": str(tmp_path)},
                               progress_bar=False, kernel_name="python3")
    verdict = json.loads((tmp_path / "verdict-90_troubleshoot.json").read_text())
    assert verdict["ok"] and verdict["mode"] == "plan" and verdict["changed"] == 0
    assert "namespaces | stuck in Terminating" in verdict["steps"] and "webhooks | remove" in verdict["steps"]
