"""Istio (mlplat.cluster.istio): the version guard, istioctl version parsing, Kubeflow's bundled
Istio built from the offline bundle, and the Pod Security fix of the add-ons."""

from __future__ import annotations

import pytest

from mlplat.cluster import bundle, istio as ist
from mlplat.params import load_params
from mlplat.params.load import ParamsError

from cluster_helpers import SITE


@pytest.fixture
def site():
    return load_params(SITE)


def _refused(checks):
    return [c for c in checks if not c.ok]


def test_guard_passes_the_default_stack(site):
    checks = ist.guard(site, "v1.34.4")
    assert ist.guard_ok(checks), checks
    assert any("Istio 1.28 supports Kubernetes 1.30-1.34; cluster is 1.34" in c.message for c in checks)


def test_guard_refuses_istio_14_on_kubernetes_134(site):
    site.versions.istio = "1.4.3"
    bad = _refused(ist.guard(site, "v1.34.4"))
    text = "\n".join(f"{c.check}: {c.message} / {c.fix}" for c in bad)
    assert "Istio 1.4 supports Kubernetes 1.13-1.16; cluster is 1.34" in text
    assert "not served there" in text
    assert "Kubeflow 26.03 ships Istio 1.28; versions.istio is 1.4.3" in text


def test_guard_refuses_kubeflow_2603_on_kubernetes_130_as_the_cluster_reports_it(site):
    bad = _refused(ist.guard(site, "v1.30.4"))
    text = "\n".join(c.message for c in bad)
    assert "Kubeflow 26.03 (its bundled Istio) supports Kubernetes 1.34+; cluster is 1.30" in text
    assert any(c.fix == "upgrade the cluster to Kubernetes 1.34 or later" for c in bad)
    # Istio 1.28 itself would run on 1.30: only the Kubeflow pairing refuses it.
    assert not any(c.check == "istio | kubernetes" for c in bad)


def test_guard_checks_the_istioctl_on_path(site):
    site.istio.method = "istioctl"
    bad = _refused(ist.guard(site, "v1.34.4", istioctl_version="1.4.3"))
    text = "\n".join(c.message for c in bad)
    assert "istioctl on PATH is 1.4.3, the params pin 1.28.0" in text
    assert "Istio 1.4 supports Kubernetes 1.13-1.16; cluster is 1.34" in text
    assert ist.guard_ok(ist.guard(site, "v1.34.4", istioctl_version="1.28.0"))


def test_params_with_those_stacks_do_not_even_load(tmp_path):
    for extra, needle in (('versions: {istio: "1.4.3"}', "Istio 1.4 supports Kubernetes 1.13-1.16, not 1.34"),
                          ('versions: {kubernetes: "1.30.14"}', "Kubeflow 26.03 supports Kubernetes 1.34+, not 1.30")):
        p = tmp_path / "bad.yaml"
        p.write_text(SITE.read_text() + extra + "\n")
        with pytest.raises(ParamsError) as e:
            load_params(p)
        assert needle in str(e.value)


def test_parse_istioctl_version():
    assert ist.parse_istioctl_version("client version: 1.28.0\n") == "1.28.0"
    assert ist.parse_istioctl_version("1.4.3\n") == "1.4.3"
    with pytest.raises(ValueError):
        ist.parse_istioctl_version("command not found")


def test_dashboards():
    ds = {d.addon: d for d in ist.dashboards(["kiali", "jaeger"], "/k/config")}
    assert ds["kiali"].command == "kubectl --kubeconfig /k/config -n istio-system port-forward svc/kiali 20001:20001"
    assert ds["jaeger"].command.endswith("port-forward svc/tracing 16686:80")
    assert ds["jaeger"].url == "http://localhost:16686/jaeger"


# -- from the offline bundle ------------------------------------------------------------------------

def test_kubeflow_istio_builds_offline(site, shared):
    root = bundle.kubeflow_manifests(site)
    objs = bundle.build(root, ist.KUBEFLOW_NAMESPACE_PATH)
    for rel in ist.KUBEFLOW_ISTIO_PATHS:
        objs += bundle.build(root, rel)
    kinds = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objs}
    for kind, ns, name in ist.KUBEFLOW_WORKLOADS:
        assert (kind, ns, name) in kinds
    images = {c["image"] for o in objs if o["kind"] in ("Deployment", "DaemonSet")
              for c in o["spec"]["template"]["spec"]["containers"]}
    assert all(i.endswith(":1.28.0") for i in images), images
    assert sum(1 for o in objs if o["kind"] == "CustomResourceDefinition") == 14
    assert "istio-system" in ist.enforced_restricted(objs)


def test_addons_meet_restricted_after_the_fix(site, shared):
    objs = [o for a in ist.ADDONS for o in bundle.istio_addon(site, a)]
    fixed, notes = ist.restricted_pod_security(objs, {"istio-system"})
    assert len(notes) == 4
    for o in fixed:
        if o["kind"] != "Deployment":
            continue
        spec = o["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
            assert sc.get("seccompProfile") or spec["securityContext"].get("seccompProfile")
    prom = next(o for o in fixed if o["kind"] == "Deployment" and o["metadata"]["name"] == "prometheus")
    assert {c["securityContext"]["runAsUser"] for c in prom["spec"]["template"]["spec"]["containers"]} == {65534}
    # Nothing changes outside the namespaces that enforce restricted, and the input is not mutated.
    same, none = ist.restricted_pod_security(objs, set())
    assert same == objs and not none


def test_flannel_network_follows_the_pod_cidr(site, shared):
    site.kubernetes.pod_cidr = "10.200.0.0/16"
    cm = next(o for o in bundle.flannel(site) if o["kind"] == "ConfigMap")
    assert '"Network": "10.200.0.0/16"' in cm["data"]["net-conf.json"]


def test_flannel_uses_the_nodes_announced_addresses(site, shared):
    """flanneld is told each node IP (--iface=<ip>, first match wins), not left to the default
    route's NIC; args that already choose an interface stay as they are."""
    from mlplat.cluster.kubeadm import node_ip

    def flannel_args(objs):
        ds = next(o for o in objs if o["kind"] == "DaemonSet")
        return next(c for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == "kube-flannel")["args"]

    args = flannel_args(bundle.flannel(site))
    want = [f"--iface={node_ip(h)}" for h in site.hosts]
    assert len(want) == len(site.hosts) >= 2 and args[-len(want):] == want
    assert args[:-len(want)] == flannel_args(bundle.load_manifests(bundle.flannel_file(site)))  # the rest as released
    site.hosts[0].static_address = None
    site.hosts[0].address = "gpu-1.example"  # no IP known for this host: it is left out, not guessed
    assert "--iface=gpu-1.example" not in flannel_args(bundle.flannel(site))


def test_missing_bundle_files_are_named(site, shared, tmp_path):
    site.versions.flannel = "0.99.0"
    with pytest.raises(bundle.BundleMissing, match=r"kube-flannel-v0\.99\.0\.yml is not in the offline bundle"):
        bundle.flannel(site)
    site.versions.flannel = "0.28.9"
    site.kubeflow.bundle = str(tmp_path / "nowhere")
    # a bundle the params name but that is not there is an error, not a silent fall-back
    with pytest.raises(bundle.BundleMissing, match="kubeflow.bundle .*nowhere is not a folder"):
        bundle.flannel(site)
    site.kubeflow.bundle = str(shared / "fixtures" / "offline-bundle" / "kubeflow-manifests-26.03.tar.gz")
    assert bundle.flannel_file(site).exists()
