"""Remote kustomize bases: parsing kustomize's URL forms into the kit layout, finding every one
below the chosen components, and recording a kit (which must fail loudly without a network)."""

from __future__ import annotations

import time

import pytest
from mlplat.kubeflow import build as kbuild
from mlplat.kubeflow import remotes


@pytest.mark.parametrize("url, kind, kit_path", [
    ("https://github.com/kubernetes-sigs/lws//config/default?ref=v0.7.0", "git",
     "remote/github.com/kubernetes-sigs/lws@v0.7.0/config/default"),
    ("https://github.com/argoproj/argo-workflows/manifests/base/crds/minimal?ref=v3.7.3", "git",
     "remote/github.com/argoproj/argo-workflows@v3.7.3/manifests/base/crds/minimal"),
    ("https://github.com/kubernetes-sigs/jobset/releases/download/v0.10.1/manifests.yaml", "file",
     "remote/github.com/kubernetes-sigs/jobset/releases/download/v0.10.1/manifests.yaml"),
    ("git@github.com:org/repo.git//deploy/base?ref=v2", "git", "remote/github.com/org/repo@v2/deploy/base"),
    ("github.com/org/repo/deploy?ref=main", "git", "remote/github.com/org/repo@main/deploy"),
    ("git::https://gitlab.com/group/project//k8s?ref=abc123", "git", "remote/gitlab.com/group/project@abc123/k8s"),
])
def test_parse_remote_into_the_kit_layout(url, kind, kit_path):
    r = remotes.parse_remote(url)
    assert (r.kind, r.kit_path) == (kind, kit_path)
    assert remotes.is_remote(url)


@pytest.mark.parametrize("entry", ["../common/cert-manager/overlays/kubeflow", "base", "deployment.yaml"])
def test_local_entries_are_not_remote(entry):
    assert not remotes.is_remote(entry)


def test_every_remote_of_the_default_set(kf_source):
    entries = kbuild.example_entries(kf_source)
    g = remotes.walk_entries((kf_source.root / "example").resolve(), entries)
    got = sorted((str(u.kustomization.relative_to(kf_source.root)), u.field, u.index, u.remote.url) for u in g.uses)
    assert got == [
        ("applications/pipeline/upstream/third-party/argo/base/kustomization.yaml", "resources", 0,
         "https://github.com/argoproj/argo-workflows/manifests/base/workflow-controller?ref=v3.7.3"),
        ("applications/pipeline/upstream/third-party/argo/installs/cluster/kustomization.yaml", "resources", 0,
         "https://github.com/argoproj/argo-workflows/manifests/base/crds/minimal?ref=v3.7.3"),
        ("applications/pipeline/upstream/third-party/argo/installs/cluster/kustomization.yaml", "resources", 1,
         "https://github.com/argoproj/argo-workflows/manifests/cluster-install-no-crds/workflow-controller-rbac?ref=v3.7.3"),
        ("applications/trainer/upstream/third-party/jobset/kustomization.yaml", "resources", 0,
         "https://github.com/kubernetes-sigs/jobset/releases/download/v0.10.1/manifests.yaml"),
    ]
    assert not g.helm and not g.problems
    # LeaderWorkerSet (in the kit) is only reached by the trainer's data-cache overlay
    lws = remotes.walk_entries((kf_source.root / "example").resolve(),
                               ["../applications/trainer/upstream/overlays/data-cache"])
    assert sorted(u.remote.kit_path for u in lws.uses) == [
        "remote/github.com/kubernetes-sigs/jobset/releases/download/v0.10.1/manifests.yaml",
        "remote/github.com/kubernetes-sigs/lws@v0.7.0/config/default"]
    res = remotes.resolve(lws.remotes, kf_source.kit)
    assert res.ok()


def test_record_plan_commands():
    rs = [remotes.parse_remote("https://github.com/argoproj/argo-workflows/manifests/base/workflow-controller?ref=v3.7.3"),
          remotes.parse_remote("https://github.com/argoproj/argo-workflows/manifests/cluster-install-no-crds/"
                               "workflow-controller-rbac?ref=v3.7.3"),
          remotes.parse_remote("https://github.com/kubernetes-sigs/jobset/releases/download/v0.10.1/manifests.yaml")]
    assert remotes.record_plan(rs, "$KIT") == [
        "rm -rf /tmp/mlplat-kit-argoproj-argo-workflows-v3.7.3 && git clone --depth 1 --branch v3.7.3 "
        "https://github.com/argoproj/argo-workflows /tmp/mlplat-kit-argoproj-argo-workflows-v3.7.3",
        "mkdir -p $KIT/remote/github.com/argoproj/argo-workflows@v3.7.3 && cp -a "
        "/tmp/mlplat-kit-argoproj-argo-workflows-v3.7.3/. $KIT/remote/github.com/argoproj/argo-workflows@v3.7.3/ "
        "&& rm -rf $KIT/remote/github.com/argoproj/argo-workflows@v3.7.3/.git "
        "/tmp/mlplat-kit-argoproj-argo-workflows-v3.7.3",
        "mkdir -p $KIT/remote/github.com/kubernetes-sigs/jobset/releases/download/v0.10.1",
        "curl -fsSL --retry 3 --max-time 120 -o $KIT/remote/github.com/kubernetes-sigs/jobset/releases/download/"
        "v0.10.1/manifests.yaml https://github.com/kubernetes-sigs/jobset/releases/download/v0.10.1/manifests.yaml",
    ]


def test_recording_without_a_network_fails_loudly(tmp_path, monkeypatch):
    """Online recording (git clone) through a proxy that refuses: an error naming the command,
    at once, never a silent half-kit."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.setenv(k, dead)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    r = remotes.parse_remote("https://github.com/kubernetes-sigs/lws//config/default?ref=v0.7.0")
    t0 = time.monotonic()
    try:
        with pytest.raises(remotes.RemoteError, match="git clone"):
            remotes.record([r], tmp_path / "kit", timeout=60)
    finally:
        s.close()
    assert time.monotonic() - t0 < 60
    assert not (tmp_path / "kit" / r.repo_root).exists()
