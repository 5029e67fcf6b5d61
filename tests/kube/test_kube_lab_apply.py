"""mlplat.kube against the lab cluster: a real kube-apiserver, etcd, controllers and scheduler with
KWOK nodes. No mocks.

Apply, dry-run and diff of the Kubeflow training-operator manifests from the offline bundle;
idempotent re-apply; waits by watch with their latency; temporary and permanent errors.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from lab_support import wait_webhook_active
from mlplat.kube import (NO_RETRY, KubeError, Retry, WaitFailed, WaitTimeout, apply, events_table, load_manifests,
                         pod_logs, pods_table, summary, wait_for)
from mlplat.kube.wait import deployment_available
from mlplat.report import hint_for

pytestmark = pytest.mark.lab_cluster


def _exists(kube, kind, api_version, name, namespace=None) -> bool:
    res = kube.resource(kind, api_version)
    return kube.get_or_none(res.path(namespace, name)) is not None


def test_plan_of_the_training_operator_writes_nothing(kube, training_operator_yaml):
    objs = load_manifests(training_operator_yaml)
    assert not _exists(kube, "CustomResourceDefinition", "apiextensions.k8s.io/v1", "pytorchjobs.kubeflow.org")
    results = apply(kube, objs, dry_run=True, progress=False)
    assert all(r.ok for r in results), [r.message for r in results if not r.ok]
    assert len(results) == len(objs)
    assert all(r.changed for r in results)
    crd = next(r for r in results if r.step.endswith("pytorchjobs.kubeflow.org"))
    assert crd.data["action"] == "would create" and "+kind: CustomResourceDefinition" in crd.diff
    dep = next(r for r in results if r.data["kind"] == "Deployment")
    assert "namespace kubeflow is created by this apply" in dep.message
    # dry run: nothing was created
    assert not _exists(kube, "CustomResourceDefinition", "apiextensions.k8s.io/v1", "pytorchjobs.kubeflow.org")
    assert not _exists(kube, "Namespace", "v1", "kubeflow")


def test_apply_of_the_training_operator_then_reapply_changes_nothing(kube, training_operator_yaml):
    objs = load_manifests(training_operator_yaml)
    first = apply(kube, objs, progress=False)
    assert all(r.ok for r in first), [r.message for r in first if not r.ok]
    assert summary(first) == {"created": len(objs)}
    # the CRDs were waited for: Established, and their kinds are served
    crd = kube.get(kube.resource("CustomResourceDefinition").path(None, "pytorchjobs.kubeflow.org"))
    assert {c["type"]: c["status"] for c in crd["status"]["conditions"]}["Established"] == "True"
    assert kube.resource("PyTorchJob").api_version == "kubeflow.org/v1"

    rv_before = {r.step: _rv(kube, r) for r in first}
    second = apply(kube, objs, progress=False)
    assert all(r.ok for r in second)
    assert [r.step for r in second if r.changed] == [], "an idempotent re-apply must report no change"
    assert summary(second) == {"unchanged": len(objs)}
    # and it really wrote nothing the server counts as a change
    assert {r.step: _rv(kube, r) for r in second} == rv_before

    plan = apply(kube, objs, dry_run=True, progress=False)
    assert summary(plan) == {"no change": len(objs)} and all(r.diff == "" for r in plan)


def _rv(kube, r) -> str:
    d = r.data
    res = kube.resource(d["kind"], d["apiVersion"])
    return kube.get(res.path(d["namespace"], d["name"]))["metadata"]["resourceVersion"]


def test_plan_shows_a_diff_of_a_change_and_apply_makes_it(kube, training_operator_yaml):
    objs = load_manifests(training_operator_yaml)
    apply(kube, objs, progress=False)
    dep = next(o for o in objs if o["kind"] == "Deployment")
    changed = {**dep, "metadata": {**dep["metadata"], "labels": {**dep["metadata"].get("labels", {}),
                                                                  "mlplat.io/test": "diff"}}}
    plan = apply(kube, [changed], dry_run=True, progress=False)
    [r] = plan
    assert r.ok and r.changed and r.data["action"] == "would change"
    assert "+    mlplat.io/test: diff" in r.diff and r.diff.startswith("--- live/Deployment kubeflow/training-operator")
    live = kube.get(kube.resource("Deployment").path("kubeflow", "training-operator"))
    assert "mlplat.io/test" not in live["metadata"].get("labels", {}), "plan mode must not write"
    [r] = apply(kube, [changed], progress=False)
    assert r.changed and r.data["action"] == "configured" and "mlplat.io/test: diff" in r.diff
    [r] = apply(kube, [dep], progress=False)  # and back: the label we owned is removed
    assert r.changed and "-    mlplat.io/test: diff" in r.diff


def test_wait_for_the_training_operator_deployment(kube, training_operator_yaml):
    apply(kube, load_manifests(training_operator_yaml), progress=False)
    [dep] = wait_for(kube, "Deployment", "training-operator", "kubeflow", timeout=60, progress=False)
    assert deployment_available(dep)[0]
    table = pods_table(kube, "kubeflow")
    assert len(table) == 1 and table.frame.iloc[0]["status"] == "Running"


def _deployment(name: str, ns: str, replicas: int = 2) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}}}


def test_readiness_is_detected_within_a_second(kube, test_ns):
    """The wait returns soon after the condition holds (by watch: well under a second on an idle
    machine; the bound asserted, 3 s, leaves room for a loaded 2-core CI machine while still
    telling a watch from a slow poll or a hang); 'holds' is seen by a parallel 10 ms poll."""
    res = kube.resource("Deployment")
    latencies = []
    for i in range(3):
        name = f"lat-{i}"
        seen: list[float] = []

        def poll():
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                o = kube.get_or_none(res.path(test_ns, name))
                if o and deployment_available(o)[0]:
                    seen.append(time.monotonic())
                    return
                time.sleep(0.01)

        th = threading.Thread(target=poll)
        [r] = apply(kube, [_deployment(name, test_ns)], progress=False)
        assert r.ok, r.message
        th.start()
        wait_for(kube, "Deployment", name, test_ns, timeout=30, progress=False)
        returned = time.monotonic()
        th.join()
        assert seen, "the poll never saw the Deployment Available"
        latencies.append(returned - seen[0])
    assert max(latencies) < 3.0, f"readiness detected {max(latencies):.2f} s after it held: {latencies}"


def test_wait_for_a_job_and_its_logs_and_events(kube, test_ns):
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "hello", "namespace": test_ns},
           "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never", "containers": [
               {"name": "c", "image": "busybox:1.36", "command": ["echo", "hi"]}]}}}}
    [r] = apply(kube, [job], progress=False)
    assert r.ok
    [done] = wait_for(kube, "Job", "hello", test_ns, timeout=60, progress=False)
    assert done["status"]["succeeded"] == 1
    [pod] = wait_for(kube, "Pod", namespace=test_ns, selector="job-name=hello", condition="Succeeded",
                     timeout=30, progress=False)
    text = pod_logs(kube, pod["metadata"]["name"], test_ns)
    assert text.strip(), "kubectl logs of a lab pod returns the lab's chosen log file"
    ev = events_table(kube, test_ns)
    assert {"SuccessfulCreate", "Scheduled"} <= set(ev.frame["reason"])


def test_wait_timeout_says_what_is_missing(kube, test_ns):
    dep = _deployment("never", test_ns, replicas=1)
    dep["spec"]["template"]["spec"]["nodeSelector"] = {"mlplat.io/no-such-node": "x"}
    apply(kube, [dep], progress=False)
    t0 = time.monotonic()
    with pytest.raises(WaitTimeout) as e:
        wait_for(kube, "Deployment", "never", test_ns, timeout=2, progress=False)
    assert time.monotonic() - t0 < 5
    assert f"{test_ns}/never" in str(e.value) and "0/1 replicas available" in str(e.value)


def test_wait_for_a_failed_job_stops_at_once(kube, test_ns):
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "doomed", "namespace": test_ns},
           "spec": {"backoffLimit": 0, "activeDeadlineSeconds": 1, "template": {"spec": {
               "restartPolicy": "Never", "nodeSelector": {"mlplat.io/no-such-node": "x"},
               "containers": [{"name": "c", "image": "busybox:1.36"}]}}}}
    apply(kube, [job], progress=False)
    with pytest.raises(WaitFailed, match="DeadlineExceeded"):
        wait_for(kube, "Job", "doomed", test_ns, timeout=60, progress=False)


def test_permanent_errors_stop_without_retry_and_say_why(kube, test_ns):
    bad = _deployment("bad", test_ns)
    bad["spec"]["selector"] = {"matchLabels": {"app": "other"}}  # 422: selector does not match labels
    unknown = {"apiVersion": "example.invalid/v1", "kind": "Gizmo", "metadata": {"name": "g", "namespace": test_ns}}
    nowhere = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": f"missing-{test_ns}"}}
    t0 = time.monotonic()
    r_bad, r_unknown, r_nowhere = apply(kube, [bad, unknown, nowhere], progress=False)
    assert time.monotonic() - t0 < 5
    assert not r_bad.ok and r_bad.data["attempts"] == 1
    assert "HTTP 422" in r_bad.message and "permanent error, not retried" in r_bad.message
    assert not r_unknown.ok and 'no matches for kind "Gizmo"' in r_unknown.message
    assert "version pairing" in hint_for(r_unknown.message)
    assert not r_nowhere.ok and f'namespaces "missing-{test_ns}" not found' in r_nowhere.message


def test_a_webhook_without_backend_is_retried_until_it_goes(kube, test_ns):
    """failed calling webhook (service missing) is temporary: retried with notes, and the apply goes
    through once the webhook is gone; with too small a retry budget it gives up and says so."""
    hook = _deny_webhook(test_ns)
    [r] = apply(kube, [hook], progress=False)
    assert r.ok
    wait_webhook_active(kube, test_ns, hook)  # so that every attempt below meets it
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "blocked", "namespace": test_ns}, "data": {}}
    notes: list[str] = []
    [r] = apply(kube, [cm], retry=Retry(attempts=3, initial=0.1), progress=False, note=notes.append)
    assert not r.ok and r.data["attempts"] == 3
    assert "failed calling webhook" in r.message and "temporary error, gave up after 3 attempt(s)" in r.message
    assert "90_troubleshoot" in r.hint
    assert len(notes) == 2 and all("retrying ConfigMap" in n and "admission webhook not ready" in n for n in notes)

    res = kube.resource("ValidatingWebhookConfiguration")
    remover = threading.Timer(1.5, lambda: kube.delete(res, hook["metadata"]["name"]))
    remover.start()
    notes.clear()
    [r] = apply(kube, [cm], retry=Retry(attempts=20, initial=0.2, max_delay=1.0), progress=False, note=notes.append)
    remover.join()
    assert r.ok and r.changed and r.data["action"] == "created", r.message
    assert notes and "after" in r.message and "retries" in r.message
    [r] = apply(kube, [cm], retry=NO_RETRY, progress=False)
    assert r.ok and not r.changed


def _deny_webhook(ns: str) -> dict:
    return {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": f"stale-{ns}", "labels": {"mlplat.io/test": ns}},
            "webhooks": [{
                "name": f"deny.{ns}.mlplat.io", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                "failurePolicy": "Fail", "timeoutSeconds": 2,
                "clientConfig": {"service": {"name": "missing-svc", "namespace": ns, "path": "/validate"}},
                "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                           "resources": ["configmaps"]}],
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}]}


def test_kube_errors_are_typed(kube):
    with pytest.raises(KubeError) as e:
        kube.get("/api/v1/namespaces/kube-system/configmaps/no-such-" + uuid.uuid4().hex[:6])
    assert e.value.status == 404 and e.value.object_missing and not e.value.temporary
