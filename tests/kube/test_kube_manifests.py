"""Manifests as data: loading, ordering, normalizing and diffing (no cluster needed)."""

from __future__ import annotations

import tarfile

import pytest

from mlplat.kube import ManifestError, diff, kustomize, load_manifests, normalize
from mlplat.kube.apply import Retry
from mlplat.kube.manifests import ref, tier

MULTI = """
---
# a comment-only document is empty
---
apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: a, namespace: demo}
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: b, namespace: demo}
"""


def test_multi_document_yaml_skips_empty_docs_and_expands_lists():
    objs = load_manifests(MULTI)
    assert [ref(o) for o in objs] == ["Namespace demo", "ConfigMap demo/a", "ConfigMap demo/b"]


def test_load_from_files_dirs_dicts_and_lists(tmp_path):
    (tmp_path / "b.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n")
    (tmp_path / "a.yml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n")
    (tmp_path / "notes.txt").write_text("not yaml: [")
    got = load_manifests(tmp_path, [{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}])
    assert [o["metadata"]["name"] for o in got] == ["a", "b", "s"]
    assert load_manifests(str(tmp_path / "a.yml"))[0]["metadata"]["name"] == "a"


def test_invalid_documents_say_where():
    with pytest.raises(ManifestError, match=r"document 2 \(ConfigMap\) lacks metadata.name"):
        load_manifests("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\napiVersion: v1\nkind: ConfigMap\n")
    with pytest.raises(ManifestError, match="not valid YAML"):
        load_manifests("a: [\n")


def test_apply_order_puts_namespaces_and_crds_first_and_webhooks_last():
    kinds = ["ValidatingWebhookConfiguration", "Deployment", "CustomResourceDefinition", "Namespace", "APIService"]
    assert [tier({"kind": k}) for k in kinds] == [2, 1, 0, 0, 2]


def test_normalize_strips_server_noise_and_masks_secrets():
    live = {"apiVersion": "v1", "kind": "Secret", "metadata": {
        "name": "s", "uid": "u", "resourceVersion": "7", "generation": 2, "creationTimestamp": "t",
        "managedFields": [{}], "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
        "data": {"password": "c2VjcmV0"}, "status": {"x": 1}}
    n = normalize(live)
    assert n["metadata"] == {"name": "s"}
    assert "status" not in n
    assert n["data"]["password"].startswith("*** (sha256:")
    assert "c2VjcmV0" not in diff(None, live, "s")


def test_diff_is_empty_for_equal_objects_and_unified_otherwise():
    a = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "resourceVersion": "1"}, "data": {"k": "1"}}
    b = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "resourceVersion": "2"}, "data": {"k": "1"}}
    assert diff(a, b) == ""
    b["data"]["k"] = "2"
    d = diff(a, b, "ConfigMap c")
    assert "--- live/ConfigMap c" in d and "-  k: '1'" in d and "+  k: '2'" in d


def test_retry_backoff_grows_and_is_capped():
    r = Retry(initial=0.25, factor=2, max_delay=2)
    assert [r.delay(i) for i in range(1, 6)] == [0.25, 0.5, 1.0, 2.0, 2.0]


@pytest.fixture(scope="session")
def kubeflow_manifests(shared, tmp_path_factory):
    tgz = shared / "fixtures" / "offline-bundle" / "kubeflow-manifests-26.03.tar.gz"
    if not tgz.exists():
        pytest.skip(f"{tgz} not found")
    dest = tmp_path_factory.mktemp("kf")
    with tarfile.open(tgz) as t:
        t.extractall(dest, filter="data")
    return next(dest.iterdir())


def test_kustomize_builds_the_training_operator_from_the_offline_bundle(kubeflow_manifests):
    objs = load_manifests(kustomize(kubeflow_manifests / "applications/training-operator/upstream/overlays/kubeflow"))
    kinds = sorted({o["kind"] for o in objs})
    assert "CustomResourceDefinition" in kinds and "Deployment" in kinds
    assert {o["metadata"]["name"] for o in objs if o["kind"] == "CustomResourceDefinition"} >= {
        "pytorchjobs.kubeflow.org", "tfjobs.kubeflow.org"}
