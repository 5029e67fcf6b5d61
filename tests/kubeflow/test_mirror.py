"""Mirror plans as command text, golden-tested: a private registry (skopeo, or docker), and per-node
import (ctr pull/tag/export on a staging machine; copy and ``ctr -n k8s.io images import`` per
host, skipping what a host already holds). And the check that flags images a node would still
pull from a registry it cannot reach."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from mlplat.images import mirror
from mlplat.images.inventory import scan

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "kubeflow"
UPDATE = os.environ.get("MLPLAT_UPDATE_GOLDEN") == "1"
MIRROR = "registry.example.internal:5000"

# What `ctr -n k8s.io images ls -q` prints on a containerd node: one image name per line (the CRI
# plugin keeps a tag name, a digest name and the image id of each image; containerd's
# cmd/ctr/commands/images/images.go prints image.Name when -q is given). Typed for this test.
PROBE_NODE_A = """\
docker.io/library/busybox:1.28
quay.io/jetstack/cert-manager-controller:v1.19.4
quay.io/jetstack/cert-manager-controller@sha256:0a1d9d8f7c1fcd1ba8f4a0a0c5f7c1b4e1c3a0e7b0ea3b7a2c8a3e3f5d2c1b0a
quay.io/jetstack/cert-manager-webhook:v1.19.4
registry.k8s.io/jobset/jobset:v0.10.1
registry.k8s.io/pause:3.10
sha256:873ed75102791e5b0b8a7fcd41606c92fcec98d56d05ead4ac5131650004c136
"""


def golden(name: str, text: str) -> None:
    """Compare with tests/golden/kubeflow/<name>; MLPLAT_UPDATE_GOLDEN=1 rewrites it."""
    path = GOLDEN / name
    if UPDATE or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if not UPDATE:
            pytest.fail(f"golden file {path} did not exist and was written: check it and commit it")
    assert text == path.read_text(), f"differs from {path} (MLPLAT_UPDATE_GOLDEN=1 to rewrite after review)"


@pytest.fixture(scope="module")
def training_inventory(built):
    return built["training"].inventory


@pytest.mark.slow
def test_golden_registry_plan(training_inventory):
    plan = mirror.registry_plan(training_inventory, MIRROR)
    assert len(plan.rows) == 18
    golden("mirror-registry.training-only.skopeo.sh", plan.text())


@pytest.mark.slow
def test_golden_registry_plan_docker(training_inventory):
    golden("mirror-registry.training-only.docker.sh", mirror.registry_plan(training_inventory, MIRROR, tool="docker").text())


@pytest.mark.slow
def test_golden_kustomize_images_rewrite(built):
    """The kustomize `images:` entries and image patches the registry build applies."""
    res = built["training-registry"]
    top = yaml.safe_load((res.build_dir / "tree" / "mlplat-build" / "kustomization.yaml").read_text())
    golden("kustomize-images.training-only.yaml", yaml.safe_dump({"images": top["images"]}, sort_keys=False))
    assert {u.full.split("/", 1)[0] for u in res.inventory.uses} == {MIRROR}


@pytest.mark.slow
def test_golden_node_import_plan(training_inventory):
    present = {"node-a": mirror.parse_image_list(PROBE_NODE_A), "node-b": set()}
    plan = mirror.node_import_plan(training_inventory, ["node-a", "node-b", "node-c"], "/srv/kubeflow-images",
                                   present=present)
    rows = {r["host"]: r for r in plan.rows()}
    assert rows["node-a"] == {"host": "node-a", "to_import": 14, "present": 4, "probed": True}
    assert rows["node-b"]["to_import"] == 18 and rows["node-c"] == {"host": "node-c", "to_import": 18, "present": 0,
                                                                     "probed": False}
    text = plan.text({"node-a": "10.0.0.11", "node-b": "10.0.0.12", "node-c": "10.0.0.13"})
    assert "registry.k8s.io/jobset/jobset:v0.10.1" not in "\n".join(plan.host_commands(plan.hosts[0]))
    golden("mirror-node-import.training-only.ctr.sh", text)


@pytest.mark.slow
def test_golden_node_import_from_a_mirror_with_docker(training_inventory):
    """Pull from a reachable mirror, tag back to the canonical name, save; hosts run Docker."""
    plan = mirror.node_import_plan(training_inventory, ["node-a"], "/srv/kubeflow-images", pull_from=MIRROR,
                                   runtime="docker", stager="docker")
    golden("mirror-node-import.training-only.docker.sh", plan.text({"node-a": "10.0.0.11"}, user="ops"))


def test_parse_image_list_normalizes():
    names = mirror.parse_image_list("busybox:1.28\nkserve/agent:v0.16.0\n<none>:<none>\n" + PROBE_NODE_A)
    assert "docker.io/library/busybox:1.28" in names and "docker.io/kserve/agent:v0.16.0" in names
    assert not any(n.startswith("sha256:") for n in names)


def _pod(image, policy=None):
    c = {"name": "c", "image": image}
    if policy:
        c["imagePullPolicy"] = policy
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": image.split("/")[-1].split(":")[0], "namespace": "ns"},
            "spec": {"containers": [c]}}


def test_pull_check_flags_unreachable_and_always():
    objs = [_pod(f"{MIRROR}/ghcr.io/a/b:v1"), _pod("ghcr.io/kubeflow/x:v1"), _pod(f"{MIRROR}/quay.io/c/d:v2", "Always"),
            _pod("busybox")]
    inv = scan(objs)
    found = mirror.pull_check(inv, objs, reachable={MIRROR})
    problems = sorted((f["image"], f["problem"]) for f in found)
    assert problems == [
        ("busybox", "no imagePullPolicy and a floating tag (busybox): pulls on every start even when preloaded"),
        ("docker.io/library/busybox:latest", "would be pulled from docker.io, which the nodes cannot reach"),
        ("ghcr.io/kubeflow/x:v1", "would be pulled from ghcr.io, which the nodes cannot reach"),
        (f"{MIRROR}/quay.io/c/d:v2", "imagePullPolicy: Always: pulls on every start even when preloaded"),
    ]
    # preloaded on every node: only the pull policies remain
    pre = {h: {r.full for r in inv.refs.values()} for h in ("a", "b")}
    assert len(mirror.pull_check(inv, objs, reachable=set(), preloaded=pre)) == 2
    # one node lacks one image
    pre["b"].discard("ghcr.io/kubeflow/x:v1")
    f = [x for x in mirror.pull_check(inv, objs, reachable=set(), preloaded=pre) if x["registry"]]
    assert [x["problem"] for x in f] == ["not preloaded on b, and ghcr.io is unreachable"]
    # online (every registry reachable): only pull policies
    assert len(mirror.pull_check(inv, objs, reachable=None)) == 2


def test_digest_references_keep_their_digest():
    ref = mirror.try_parse("gcr.io/knative-releases/knative.dev/serving/cmd/queue@sha256:" + "4" * 64)
    assert mirror.mirror_ref(ref, MIRROR) == f"{MIRROR}/gcr.io/knative-releases/knative.dev/serving/cmd/queue@sha256:" + "4" * 64
    assert mirror.mirror_push_ref(ref, MIRROR).endswith("queue:sha256-" + "4" * 64)
    assert mirror.archive_name(ref).endswith(".tar") and len(mirror.archive_name(ref)) <= 140
