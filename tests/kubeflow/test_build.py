"""The offline build of Kubeflow 26.03 from the bundle: no network, remote bases from the kit,
Istio left out for phase 40, pull policy and registry rewrites as kustomize patches."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import yaml
from kf_helpers import broad_net
from mlplat.images.refs import try_parse
from mlplat.kubeflow import build as kbuild

pytestmark = pytest.mark.slow

ARGO = "https://github.com/argoproj/argo-workflows/manifests"
KIT_RESOLVED = {f"{ARGO}/base/crds/minimal?ref=v3.7.3",
                "https://github.com/kubernetes-sigs/jobset/releases/download/v0.10.1/manifests.yaml"}
KIT_MISSING = {f"{ARGO}/cluster-install-no-crds/workflow-controller-rbac?ref=v3.7.3",
               f"{ARGO}/base/workflow-controller?ref=v3.7.3"}
MIRROR = "registry.example.internal:5000"


def test_default_set_builds_with_no_network(offline_builds, built):
    """Built in a network namespace with only a loopback (or, without root, behind a socket guard)."""
    if offline_builds.in_netns:
        assert offline_builds.summary["probe_errno"] != 0, "the namespace reached 1.1.1.1:443"
    else:
        pytest.skip(f"no network namespace here ({offline_builds.why_not}); the builds ran behind a socket guard")
    s = offline_builds.summary["builds"]["default"]
    print(f"\nfresh offline builds: {offline_builds.seconds:.0f} s for {len(offline_builds.summary['builds'])} "
          f"option sets; default set: {s['durations']}")
    res = built["default"]
    example = kbuild.example_entries(res.source)
    assert len(example) == 27
    # everything but Kubeflow Pipelines, whose argo bases the kit lacks
    assert res.entries == [e for e in example if e != "../applications/pipeline/overlays"]
    assert set(res.left_out) == {"../applications/pipeline/overlays"}
    assert all(u in res.left_out["../applications/pipeline/overlays"] for u in KIT_MISSING)
    found = {r["url"] for r in res.remotes if r["found"]}
    missing = {r["url"] for r in res.remotes if not r["found"]}
    assert found == KIT_RESOLVED and missing == KIT_MISSING
    kinds = res.kinds()
    assert (len(res.objects), kinds["CustomResourceDefinition"], kinds["Deployment"]) == (542, 61, 35)


def test_kit_copies_are_what_the_build_used(built):
    res = built["default"]
    top = (res.build_dir / "tree" / kbuild.BUILD_DIR / "kustomization.yaml").read_text()
    assert "remote base https://github.com/kubernetes-sigs/jobset/releases/download/v0.10.1/manifests.yaml" in top
    jobset = res.build_dir / "tree" / "applications/trainer/upstream/third-party/jobset/kustomization.yaml"
    data = yaml.safe_load(jobset.read_text())
    assert data["resources"] == ["../../../../../_mlplat_remote/github.com/kubernetes-sigs/jobset/releases/download/"
                                 "v0.10.1/manifests.yaml.d"]
    assert any(o["kind"] == "Deployment" and o["metadata"]["name"] == "jobset-controller-manager" for o in res.objects)


@pytest.mark.parametrize("entry, remote, expect", [
    # a git folder with ?ref= (argo's CRDs; the default set reaches it through pipelines, left out)
    ("../applications/pipeline/upstream/third-party/argo/installs/namespace/cluster-scoped",
     "remote/github.com/argoproj/argo-workflows@v3.7.3/manifests/base/crds/minimal",
     ("CustomResourceDefinition", "workflows.argoproj.io")),
    # a git folder after `//` (LeaderWorkerSet, reached by the trainer's data-cache overlay)
    ("../applications/trainer/upstream/overlays/data-cache",
     "remote/github.com/kubernetes-sigs/lws@v0.7.0/config/default",
     ("Deployment", "lws-controller-manager")),
])
def test_each_kit_remote_resolves_in_a_real_build(kf_source, kf_cache, no_network, entry, remote, expect):
    """All three remote bases of the kit, each in a build that needs it (network closed)."""
    res = kbuild.build(kf_source, kbuild.Options(components=[entry], istio_owner="kubeflow"), cache=kf_cache)
    assert [r["kit_path"] for r in res.remotes if r["found"] and r["kit_path"] == remote] == [remote]
    assert not res.left_out
    assert any((o["kind"], o["metadata"]["name"]) == expect for o in res.objects)
    assert not no_network.attempts


def test_remote_outside_the_kit_fails_loudly(tmp_path, no_network):
    """A remote reference the kit did not resolve is never fetched: kustomize is refused at once
    (proxies point at a closed loopback port; git may use no transport but file) and says which."""
    url = "https://github.com/example/nowhere//config/default?ref=v1.0.0"
    (tmp_path / "kustomization.yaml").write_text(f"resources:\n- {url}\n")
    t0 = time.monotonic()
    with pytest.raises(kbuild.BuildError) as e:
        kbuild.run_kustomize(tmp_path, timeout=120)
    assert time.monotonic() - t0 < 60
    msg = str(e.value)
    assert url in msg and "offline build refuses" in msg
    assert "127.0.0.1" in msg or "not allowed" in msg
    assert not no_network.attempts


def test_training_only_profile(built):
    res = built["training"]
    assert res.entries == kbuild.TRAINING_ONLY and not res.left_out
    deps = sorted((o["metadata"]["namespace"], o["metadata"]["name"]) for o in res.objects if o["kind"] == "Deployment")
    assert deps == [
        ("cert-manager", "cert-manager"), ("cert-manager", "cert-manager-cainjector"),
        ("cert-manager", "cert-manager-webhook"), ("istio-system", "istio-ingressgateway"), ("istio-system", "istiod"),
        ("kubeflow", "training-operator"), ("kubeflow-system", "jobset-controller-manager"),
        ("kubeflow-system", "kubeflow-trainer-controller-manager"),
    ]
    crds = {o["metadata"]["name"] for o in res.objects if o["kind"] == "CustomResourceDefinition"}
    assert {"pytorchjobs.kubeflow.org", "tfjobs.kubeflow.org", "trainjobs.trainer.kubeflow.org",
            "jobsets.jobset.x-k8s.io"} <= crds
    assert [r["url"] for r in res.remotes] == ["https://github.com/kubernetes-sigs/jobset/releases/download/"
                                               "v0.10.1/manifests.yaml"]


def test_istio_left_out_when_phase40_owns_it(built):
    res = built["default-phase40"]
    assert set(res.left_out) == {"../common/istio/istio-crds/base", "../common/istio/istio-namespace/base",
                                 "../common/istio/istio-install/overlays/oauth2-proxy",
                                 "../applications/pipeline/overlays"}
    names = {(o["kind"], o["metadata"]["name"]) for o in res.objects}
    assert ("Deployment", "istiod") not in names
    assert not [o for o in res.objects if o["kind"] == "CustomResourceDefinition"
                and o["spec"]["group"].endswith("istio.io")]
    # Kubeflow's own Istio objects stay: they need Istio, they do not install it
    assert ("Deployment", "cluster-local-gateway") in names
    assert ("Gateway", "kubeflow-gateway") in names


def test_pull_policy_rewritten_by_a_kustomize_patch(built, kf_source):
    res = built["default"]
    before = kbuild.left_always(res.base_objects)
    assert len(before) == 4 and all(f["why"] == "imagePullPolicy: Always" for f in before)
    assert kbuild.left_always(res.objects) == []
    assert not re.search(r"imagePullPolicy\"?\s*:\s*\"?Always", res.yaml_text)
    top = yaml.safe_load((res.build_dir / "tree" / kbuild.BUILD_DIR / "kustomization.yaml").read_text())
    ops = [op for p in top["patches"] for op in yaml.safe_load(p["patch"])]
    assert sum(1 for op in ops if op["path"].endswith("/imagePullPolicy") and op["value"] == "IfNotPresent") == 4
    # not sed: the manifests in the build tree are the bundle's, byte for byte, except the
    # kustomizations pointed at the kit
    tree = res.build_dir / "tree"
    changed = []
    for f in kf_source.root.rglob("*"):
        if f.is_file() and f.read_bytes() != (tree / f.relative_to(kf_source.root)).read_bytes():
            changed.append(str(f.relative_to(kf_source.root)))
    assert sorted(changed) == ["applications/pipeline/upstream/third-party/argo/installs/cluster/kustomization.yaml",
                               "applications/trainer/upstream/third-party/jobset/kustomization.yaml"]


def test_registry_mirror_leaves_nothing_outside(built):
    res = built["default-registry"]
    assert {u.full.split("/")[0] for u in res.inventory.uses} == {MIRROR}
    # an independent net over every string: whatever looks like an image points at the mirror
    outside = {s: sorted(w)[:2] for s, w in broad_net(res.objects).items()
               if try_parse(s) is not None and ("/" in s or "@" in s) and not s.startswith(MIRROR + "/")}
    assert not outside, outside
    # Istio composes sidecar images from hub + tag: the hub moved too
    assert not re.search(r'"hub": "(?!' + re.escape(MIRROR) + ")[^\"]+\"", res.yaml_text)
    assert kbuild.left_always(res.objects) == []
    top = yaml.safe_load((res.build_dir / "tree" / kbuild.BUILD_DIR / "kustomization.yaml").read_text())
    assert len(top["images"]) == res.patches["mirror_images"] > 40
    assert {"name": "busybox", "newName": f"{MIRROR}/docker.io/library/busybox"} not in top["images"]  # text, patched
    assert {"name": "kserve/kserve-controller", "newName": f"{MIRROR}/docker.io/kserve/kserve-controller"} in top["images"]
    # same images, moved: the mirror inventory is the source inventory under the mirror's name
    src = {u.full for u in built["default"].inventory.uses}
    moved = {u.full[len(MIRROR) + 1:] for u in res.inventory.uses}
    assert moved == src


def test_second_build_reads_the_cache(kf_source, kf_cache, built):
    t0 = time.monotonic()
    res = kbuild.build(kf_source, kbuild.Options(components="default", istio_owner="kubeflow"), cache=kf_cache)
    took = time.monotonic() - t0
    print(f"\ncached default build: {took:.1f} s")
    assert res.cached, "the second build of the same inputs must come from the cache"
    # a cache hit reads files (a fresh build runs kustomize for minutes); 60 s is a hang bound that
    # leaves room for a loaded 2-core machine
    assert took < 60, f"cached default build took {took:.1f} s: not read from the cache?"
    assert res.yaml_text == built["default"].yaml_text


def test_lab_build_leaves_webhooks_out(built):
    lab, real = built["training-lab"], built["training"]
    kinds = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
    assert [o for o in real.objects if o["kind"] in kinds]
    assert not [o for o in lab.objects if o["kind"] in kinds]
    assert lab.patches["lab_webhooks_left_out"] == len([o for o in real.objects if o["kind"] in kinds])
    assert not [o for o in built["default-lab"].objects
                if ((o.get("spec") or {}).get("conversion") or {}).get("strategy") == "Webhook"]


def test_unknown_components_refused(kf_source):
    with pytest.raises(kbuild.BuildError, match="unknown components"):
        kbuild.build(kf_source, kbuild.Options(components="everything"))


def test_build_folder_reproduces_the_output(built):
    """The operator's evidence: kustomize on the kept build folder gives the same YAML."""
    res = built["training"]
    text, _ = kbuild.run_kustomize(res.build_dir / "tree" / kbuild.BUILD_DIR)
    assert text == res.yaml_text
    assert Path(res.build_dir / "final.yaml").read_text() == res.yaml_text
