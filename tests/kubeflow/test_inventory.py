"""The image inventory of Kubeflow 26.03's default set is complete: compared with every string of the
built YAML that a broad, independent net catches, nothing image-like is missing, and every
inventory entry is named in the YAML (or composed from Istio's injector values)."""

from __future__ import annotations

import pytest
from kf_helpers import broad_net
from mlplat.images.inventory import scan
from mlplat.images.refs import try_parse

pytestmark = pytest.mark.slow


def _image_like(s: str) -> bool:
    ref = try_parse(s)
    return ref is not None and ("/" in s or ":" in s or "@" in s)


def test_inventory_is_complete_against_every_image_string(built):
    res = built["default"]
    inv = {u.full for u in res.inventory.uses}
    net = broad_net(res.objects)
    missed = {s: sorted(w)[:3] for s, w in net.items() if _image_like(s) and try_parse(s).full not in inv}
    assert not missed, f"image strings in the built YAML that the inventory lacks: {missed}"
    # what the net caught and the inventory rightly ignores: words and templates, nothing image-like
    ignored = sorted(s for s in net if try_parse(s) is None or try_parse(s).full not in inv)
    assert all(not _image_like(s) for s in ignored), ignored
    assert {"proxyv2", "pilot"} <= set(ignored)  # Istio's component names: composed, see below
    # and the other way: every inventory entry is named in the YAML, or composed by Istio's injector
    named = {try_parse(s).full for s in net if _image_like(s)}
    composed = {u.full for u in res.inventory.uses if u.source == "composed"}
    assert inv - named <= composed, inv - named - composed


def test_hidden_images_are_found(built):
    inv = built["default"].inventory
    by = {}
    for u in inv.uses:
        by.setdefault(u.full, set()).add((u.source, u.kind, u.name.rsplit("-", 1)[0] if u.kind == "ConfigMap" else u.name))
    expect = {
        # controller arguments
        "quay.io/jetstack/cert-manager-acmesolver:v1.19.4": ("text", "Deployment", "cert-manager"),
        # katib-config (YAML held in a ConfigMap)
        "ghcr.io/kubeflow/katib/suggestion-optuna:v0.19.0": ("text", "ConfigMap", "katib"),
        # the Jupyter spawner's image list
        "ghcr.io/kubeflow/kubeflow/notebook-servers/jupyter-scipy:v1.10.0": ("text", "ConfigMap", "jupyter-web-app-config"),
        # an environment variable
        "docker.io/filebrowser/filebrowser:v2.25.0": ("field", "Deployment", "volumes-web-app-deployment"),
        # knative's queue sidecar, named in a ConfigMap key
        "gcr.io/knative-releases/knative.dev/serving/cmd/queue@sha256:"
        "40957d3ced3b185b7a78bbd771be69b0a13137dcbee5ff7f82ae738b56037d9c": ("field", "ConfigMap", "config"),
        # Istio's injection template text
        "docker.io/library/busybox:1.28": ("text", "ConfigMap", "istio-sidecar"),
        # composed from the injector values: Kubeflow 26.03 patches the tag to 1.29.0
        "gcr.io/istio-release/proxyv2:1.29.0": ("composed", "ConfigMap", "istio-sidecar"),
        # pod templates nested in custom resources
        "docker.io/kserve/sklearnserver:v0.16.0": ("container", "ClusterServingRuntime", "kserve"),
        "docker.io/pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime": ("container", "ClusterTrainingRuntime", "torch"),
    }
    for image, (source, kind, name) in expect.items():
        assert image in by, f"{image} not in the inventory"
        assert any(s == source and k == kind and n.startswith(name) for s, k, n in by[image]), (image, by[image])


def test_inventory_figures(built):
    """The numbers the report quotes (Kubeflow 26.03 default set, Istio included, pipelines left out)."""
    inv = built["default"].inventory
    regs = inv.registries()
    print(f"\n{len(inv.full)} images, {len(inv.uses)} uses, registries {regs}")
    assert len(inv.full) == 86
    assert set(regs) == {"docker.io", "gcr.io", "ghcr.io", "nvcr.io", "quay.io", "registry.k8s.io"}


def test_scan_skips_crd_schemas_and_templates():
    objs = [
        {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "x"},
         "spec": {"versions": [{"name": "v1", "schema": {"openAPIV3Schema": {"properties": {"image": {
             "type": "string", "description": "e.g. docker.io/library/nginx:1.25"}}}}}]}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {
            "containers": [{"name": "a", "image": "{{ .ProxyImage }}"}, {"name": "b", "image": "busybox"}],
            "initContainers": [{"name": "i", "image": "alpine:3.10", "imagePullPolicy": "Always"}]}},
    ]
    inv = scan(objs)
    assert inv.full == ["docker.io/library/alpine:3.10", "docker.io/library/busybox:latest"]
    pol = {u.image: u.pull_policy for u in inv.uses}
    assert pol == {"busybox": None, "alpine:3.10": "Always"}
