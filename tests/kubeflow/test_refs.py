"""Image references: parsing as registries and kubelets do, and finding them in free text
without catching URLs, paths, host:port pairs, label keys or words."""

from __future__ import annotations

import pytest
from mlplat.images.refs import NotAReference, find_in_text, normalize, parse


@pytest.mark.parametrize("ref, full", [
    ("busybox:1.28", "docker.io/library/busybox:1.28"),
    ("busybox", "docker.io/library/busybox:latest"),
    ("kserve/agent:v0.16.0", "docker.io/kserve/agent:v0.16.0"),
    ("docker.io/seldonio/mlserver:1.5.0", "docker.io/seldonio/mlserver:1.5.0"),
    ("index.docker.io/library/mysql:8.0", "docker.io/library/mysql:8.0"),
    ("ghcr.io/kubeflow/kubeflow/notebook-servers/jupyter-scipy:v1.10.0",
     "ghcr.io/kubeflow/kubeflow/notebook-servers/jupyter-scipy:v1.10.0"),
    ("localhost/app:1", "localhost/app:1"),
    ("registry.local:5000/ghcr.io/kubeflow/x:v1", "registry.local:5000/ghcr.io/kubeflow/x:v1"),
    ("gcr.io/knative-releases/knative.dev/serving/cmd/queue@sha256:" + "a" * 64,
     "gcr.io/knative-releases/knative.dev/serving/cmd/queue@sha256:" + "a" * 64),
    ("nvcr.io/nvidia/tritonserver:23.05-py3", "nvcr.io/nvidia/tritonserver:23.05-py3"),
])
def test_parse_normalizes_like_containerd(ref, full):
    assert normalize(ref) == full
    assert str(parse(ref)) == ref


@pytest.mark.parametrize("bad", ["", "UPPER/case:1", "/abs/path:1", "a//b:1", "http://x/y:1", "x:y:z", "{{ .ProxyImage }}"])
def test_not_references(bad):
    with pytest.raises(NotAReference):
        parse(bad)


def test_written_name_is_what_kustomize_matches():
    assert parse("kserve/agent:v0.16.0").written_name == "kserve/agent"
    assert parse("busybox:1.28").written_name == "busybox"
    assert parse("gcr.io/a/b@sha256:" + "0" * 64).written_name == "gcr.io/a/b"


def _found(text):
    return [r.original for _, _, r in find_in_text(text)]


def test_find_in_text_keeps_out_lookalikes():
    text = ("see https://github.com/kubeflow/manifests/blob/v1.0:x and /usr/lib/x86_64:foo; "
            "listen 127.0.0.1:8080 or istiod.istio-system.svc:15012, label app.kubernetes.io/name:foo, "
            "ratio 1:1, default:info, sha256:" + "b" * 64 + ", xmlns:xlink")
    assert _found(text) == []


def test_find_in_text_catches_hidden_images():
    text = ("args: --executor-image=quay.io/argoproj/argoexec:v3.7.3 --x\n"
            '{"image": "kserve/storage-initializer:v0.16.0", "defaultImageVersion": "latest"}\n'
            "  image: busybox:1.28\n"
            "queue-sidecar-image: gcr.io/knative-releases/knative.dev/serving/cmd/queue@sha256:" + "c" * 64 + "\n"
            "value is ghcr.io/kubeflow/katib/suggestion-optuna:v0.19.0.\n")
    assert _found(text) == [
        "quay.io/argoproj/argoexec:v3.7.3", "kserve/storage-initializer:v0.16.0", "busybox:1.28",
        "gcr.io/knative-releases/knative.dev/serving/cmd/queue@sha256:" + "c" * 64,
        "ghcr.io/kubeflow/katib/suggestion-optuna:v0.19.0",
    ]


def test_find_in_text_spans_point_at_the_reference():
    text = 'spawner:\n  image:\n    value: "ghcr.io/kubeflow/kubeflow/notebook-servers/jupyter-scipy:v1.10.0"\n'
    [(s, e, r)] = find_in_text(text)
    assert text[s:e] == r.original
