"""Phases 30, 40 and 99 against a real lab cluster (existing-cluster mode, KWOK GPU nodes).

The tests run in file order on one session cluster and tell a story: 30 applies flannel and the
device plugin and finds the simulated GPUs, idempotently, and fails clearly when the params
expect other GPU counts; 40's guard refuses bad stacks with no API write; 40 applies Kubeflow's
Istio and the four add-ons, idempotently, and says what the lab cannot prove; 99 without confirm
changes nothing; with confirm it removes everything 30-40 applied; then 30 runs again cleanly.
Tests that apply manifests from the shared offline bundle are marked ``needs_offline_bundle``:
without the kit they skip, saying where it was looked for, before the lab cluster is started.
"""

from __future__ import annotations

import pytest

from mlplat.cluster import inventory, nodes
from mlplat.phases import istio as p40, kubernetes as p30, teardown as p99
from mlplat.report import PhaseFailed
from shared_kit import needs_offline_bundle

pytestmark = [pytest.mark.lab_cluster, pytest.mark.slow]

STEPS30 = ["packages", "config", "init", "join", "kubeconfig", "cni", "device_plugin", "labels", "verify", "network",
           "smoke"]
STEPS40 = ["guard", "install", "addons", "verify", "dashboards"]
STEPS99 = ["guard", "cluster_objects", "node_labels", "reset", "kubeconfig", "packages"]


def run(module, params, mode, steps, **setup_kw):
    """Run a phase like its notebook does; returns (verdict, PhaseFailed or None)."""
    module.setup(params_file=str(params), mode=mode, **setup_kw)
    for s in steps:
        getattr(module, s)()
    ctx = module._ctx()
    try:
        module.finish()
        err = None
    except PhaseFailed as e:
        err = e
    return ctx.phase.verdict(), err


def rows(module, step):
    return module._ctx().phase.steps[step]


def _owned(kube, manager="mlplat"):
    owned, problems = inventory.scan(kube, manager)
    assert not problems
    return owned


@pytest.fixture(scope="module", autouse=True)
def clean_start(lab_site):
    """The story starts from a cluster where mlplat has applied nothing (another test module of the
    session may have left things): tear down first if needed."""
    from mlplat.kube import client_from

    with client_from(str(lab_site.kubeconfig)) as kube:
        if [o for o in _owned(kube) if o.action != "keep"]:
            v, err = run(p99, lab_site.params_path, "apply", STEPS99, confirm=True)
            assert err is None, err


# -- 30 ---------------------------------------------------------------------------------------------

@needs_offline_bundle
def test_30_plan_then_apply_flannel_and_device_plugin(lab_site, kube):
    v, err = run(p30, lab_site.params_path, "plan", STEPS30)
    assert err is None, err
    assert not _owned(kube), "plan mode wrote to the cluster"
    assert all(r.skipped for r in rows(p30, "init")) and "existing cluster" in rows(p30, "init")[0].message
    v, err = run(p30, lab_site.params_path, "apply", STEPS30)
    assert err is None, err
    cni = {r.message for r in rows(p30, "cni")}
    assert "DaemonSet kube-flannel/kube-flannel-ds: created" in cni
    assert any(m.startswith("DaemonSet kube-flannel/kube-flannel-ds: 2/2 pods ready") for m in cni)
    assert "DaemonSet kube-system/nvidia-device-plugin-daemonset: created" in {r.message for r in rows(p30, "device_plugin")}
    refs = {o.ref for o in _owned(kube)}
    assert {"DaemonSet kube-flannel/kube-flannel-ds", "DaemonSet kube-system/nvidia-device-plugin-daemonset",
            "Namespace kube-flannel"} <= refs
    ver = {r.host: r for r in rows(p30, "verify")}
    for h in lab_site.hosts:
        assert ver[h["name"]].ok and ver[h["name"]].data["gpu_allocatable"] == 4
        assert "lab: KWOK simulates 4 GPU(s) per node" in ver[h["name"]].message
    net = rows(p30, "network")
    assert len(net) == 4 and all(r.skipped and "KWOK nodes" in r.message for r in net)
    node = kube.get(kube.resource("Node", "v1").path(None, lab_site.hosts[0]["name"]))
    assert node["metadata"]["labels"][nodes.LABEL_GPU_PRESENT] == "true"
    smoke = rows(p30, "smoke")
    assert all(r.ok and "no GPU code ran (lab)" in r.message for r in smoke)
    assert any("simulated by KWOK" in n for n in v["notes"])


@needs_offline_bundle
def test_30_second_run_changes_nothing(lab_site):
    v, err = run(p30, lab_site.params_path, "apply", STEPS30)
    assert err is None, err
    assert v["changed"] == 0, [(r.step, r.message) for r in p30._ctx().phase.all_results() if r.changed]


def test_30_verification_fails_clearly_when_gpus_differ(lab_site, tmp_path):
    two = lab_site.write_params(tmp_path / "two-gpus.yaml", lab={"simulated_gpus": 2})
    v, err = run(p30, two, "plan", ["kubeconfig", "verify"])
    assert isinstance(err, PhaseFailed)
    for h in lab_site.hosts:
        assert (f"{h['name']}: verify | nodes and GPUs: nvidia.com/gpu allocatable is 4, expected 2 "
                f"(lab: KWOK simulates 2 GPU(s) per node (lab.simulated_gpus); the lab hosts have none)") in str(err)
    assert all(f["hint"].startswith("the node does not offer the GPUs it should") for f in v["failures"])
    # The same check off the lab: the expectation is hosts[].gpus, and it says so.
    site = lab_site.write_params(tmp_path / "real.yaml", lab=None,
                                 hosts=[dict(h, gpus=8) for h in lab_site.hosts])
    v, err = run(p30, site, "plan", ["kubeconfig", "verify"])
    assert isinstance(err, PhaseFailed)
    assert "expected 8 (params hosts[].gpus (00_preflight checked it against the host))" in str(err)


# -- 40 ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("versions,needle", [
    ({"istio": "1.4.3"}, "Istio 1.4 supports Kubernetes 1.13-1.16; cluster is 1.34"),
    ({"kubernetes": "1.30.14"}, "Kubeflow 26.03 (its bundled Istio) supports Kubernetes 1.34+; params versions.kubernetes is 1.30"),
])
def test_40_guard_refuses_before_any_apply(lab_site, kube, write_spy, versions, needle):
    """Params validation already refuses these stacks; here they are forced past it (as a stale
    params file or a hand edit would) to show the phase's own guard stops them with no API write."""
    p40.setup(params_file=str(lab_site.params_path), mode="apply")
    ctx = p40._ctx()
    for k, val in versions.items():
        setattr(ctx.params.versions, k, val)
    for s in STEPS40:
        getattr(p40, s)()
    with pytest.raises(PhaseFailed) as e:
        p40.finish()
    assert needle in str(e.value)
    assert write_spy.writes == [], write_spy.writes
    assert all(r.skipped and "version guard refused" in r.message for s in ("install", "addons", "verify")
               for r in rows(p40, s))
    assert kube.get_or_none(kube.resource("Namespace", "v1").path(None, "istio-system")) is None


@needs_offline_bundle
def test_40_applies_kubeflow_istio_and_addons_idempotently_and_honestly(lab_site, kube):
    v, err = run(p40, lab_site.params_path, "plan", STEPS40)
    assert err is None, err
    assert kube.get_or_none(kube.resource("Namespace", "v1").path(None, "istio-system")) is None
    v, err = run(p40, lab_site.params_path, "apply", STEPS40)
    assert err is None, err
    avail = {r.message.split(":")[0] for r in rows(p40, "verify") if r.step == "verify | available" and r.ok}
    assert {"Deployment istio-system/istiod", "Deployment istio-system/istio-ingressgateway",
            "DaemonSet kube-system/istio-cni-node"} | {f"Deployment istio-system/{a}" for a in
                                                     ("kiali", "grafana", "prometheus", "jaeger")} <= avail
    inj = [r for r in rows(p40, "verify") if r.step == "verify | sidecar injection"]
    assert len(inj) == 1 and inj[0].skipped and "injection not exercised" in inj[0].message
    notes = " ".join(v["notes"])
    assert "no Istio process runs" in notes and "injection is NOT exercised" in notes
    assert not any("injector answered" in r.message for r in p40._ctx().phase.all_results())
    # The add-ons were changed to pass Pod Security "restricted", which istio-system enforces.
    psa = [r.message for r in rows(p40, "addons") if r.step == "istio | addons pod security"]
    assert len(psa) == 4 and all("restricted" in m for m in psa)
    v2, err = run(p40, lab_site.params_path, "apply", STEPS40)
    assert err is None, err
    assert v2["changed"] == 0, [r.message for r in p40._ctx().phase.all_results() if r.changed]


@needs_offline_bundle
def test_40_unpatched_addon_would_be_refused_by_pod_security(lab_site, kube):
    """Why the add-ons are patched: the released Prometheus pod violates 'restricted' in istio-system."""
    from mlplat.cluster import bundle
    from mlplat.kube import KubeError
    from mlplat.params import load_params

    params = load_params(lab_site.params_path)
    dep = next(o for o in bundle.istio_addon(params, "prometheus") if o["kind"] == "Deployment")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "pss-probe", "namespace": "istio-system"},
           "spec": dep["spec"]["template"]["spec"]}
    with pytest.raises(KubeError, match='violates PodSecurity "restricted:latest"'):
        kube.request("POST", kube.resource("Pod", "v1").path("istio-system"), body=pod, query={"dryRun": "All"})


# -- 99 ---------------------------------------------------------------------------------------------

def _snapshot(kube):
    return sorted((o.ref, o.action) for o in _owned(kube))


@needs_offline_bundle  # what it must leave alone was applied by 30 and 40 from the bundle
def test_99_without_confirm_changes_nothing(lab_site, kube, write_spy):
    before = _snapshot(kube)
    assert before
    v, err = run(p99, lab_site.params_path, "apply", STEPS99)
    assert isinstance(err, PhaseFailed) and "confirm is not set. Nothing was changed" in str(err)
    assert write_spy.writes == []
    assert v["changed"] == 0
    assert _snapshot(kube) == before


# What a later phase might leave with a controller that no longer (or, on the lab, never) runs:
# custom resources carrying finalizers, one in a namespace of its own and one in "default".
CRD = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
       "metadata": {"name": "widgets.test.mlplat.io"},
       "spec": {"group": "test.mlplat.io", "scope": "Namespaced",
                "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                    "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]}}


def _widgets():
    # Labelled: an applied object owning no field (a bare Namespace) leaves no managedFields entry,
    # so no field manager can find it again (see mlplat.cluster.inventory).
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "phase60-like", "labels": {"team": "x"}}}
    w = [{"apiVersion": "test.mlplat.io/v1", "kind": "Widget",
          "metadata": {"name": "stuck", "namespace": n, "finalizers": ["test.mlplat.io/controller-gone"]}}
         for n in ("phase60-like", "default")]
    return [CRD, ns] + w


@needs_offline_bundle
def test_99_with_confirm_removes_what_30_to_60_created_and_30_runs_again(lab_site, kube, monkeypatch):
    from mlplat.kube import apply

    res = apply(kube, _widgets(), progress=False, note=lambda m: None)
    assert all(r.ok for r in res), [r.message for r in res]
    monkeypatch.setattr(p99, "GONE_TIMEOUT", 8.0)
    v, err = run(p99, lab_site.params_path, "apply", STEPS99, confirm=True)
    assert err is None, err
    gone = [r for r in rows(p99, "cluster_objects") if r.step == "cluster | gone"]
    assert gone and all(r.ok for r in gone), [r.message for r in gone]
    text = " ".join(r.message for r in gone)
    assert "removed finalizers test.mlplat.io/controller-gone from Widget default/stuck" in text
    assert kube.get_or_none("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.test.mlplat.io") is None
    assert kube.get_or_none("/api/v1/namespaces/phase60-like") is None, text
    left = [o for o in _owned(kube) if o.action != "keep"]
    assert left == [], [o.ref for o in left]
    ns = {n["metadata"]["name"] for n in kube.list(kube.resource("Namespace", "v1"))}
    assert not ns & {"istio-system", "kube-flannel", "kubeflow", "kubeflow-system"}
    node = kube.get(kube.resource("Node", "v1").path(None, lab_site.hosts[1]["name"]))
    assert nodes.LABEL_GPU_PRESENT not in node["metadata"]["labels"]
    assert node["metadata"]["labels"].get("node-role.kubernetes.io/worker") == ""  # the lab's own label stays
    # Hosts: nothing to reset in existing-cluster mode, said per host.
    assert all(r.skipped and "nothing to reset" in r.message for r in rows(p99, "reset"))
    # A second teardown finds nothing; then 30 builds again from clean.
    v, err = run(p99, lab_site.params_path, "apply", STEPS99, confirm=True)
    assert err is None and v["changed"] == 0
    v, err = run(p30, lab_site.params_path, "apply", STEPS30)
    assert err is None, err
    assert "DaemonSet kube-flannel/kube-flannel-ds: created" in {r.message for r in rows(p30, "cni")}
    assert all(r.ok for r in rows(p30, "verify"))
