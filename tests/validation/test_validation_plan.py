"""The phase-60 job plan (no cluster): layouts, names and pods, manifests valid by the CRDs of the
offline bundle, and the lab and the phase deriving the same pods."""

from __future__ import annotations

import pytest
from mlplat.params.schema import Validation
from mlplat.training import plan as tplan
from mlplat.training.jobs import crd_problems


def test_layout_spans_every_gpu_node_with_the_smallest_count():
    lay = tplan.cluster_layout({"b": 8, "a": 4, "cpu-only": 0})
    assert (lay.nodes, lay.gpus_per_node, lay.procs_per_node, lay.node_names) == (2, 4, 4, ("a", "b"))
    assert lay.world_size == 8 and not lay.cpu
    assert tplan.cluster_layout({"a": 0}) is None
    cpu = tplan.cluster_layout({}, cpu_nodes=["n2", "n1"], cpu_procs=2)
    assert cpu.cpu and (cpu.nodes, cpu.procs_per_node, cpu.node_names) == (2, 2, ("n1", "n2"))


def test_jobs_for_several_nodes():
    jobs = {j.key: j for j in tplan.validation_jobs(Validation(ddp_steps=7), tplan.cluster_layout({"a": 4, "b": 4, "c": 4}),
                                                    run_id="r1")}
    assert list(jobs) == ["sweep", "ddp-1n", "ddp-3n", "tf-smoke", "trainjob"]
    sweep = jobs["sweep"]
    assert sweep.pods == ["mlplat-allreduce-master-0", "mlplat-allreduce-worker-0", "mlplat-allreduce-worker-1"]
    spec = sweep.manifest["spec"]
    assert spec["nprocPerNode"] == "4" and spec["pytorchReplicaSpecs"]["Worker"]["replicas"] == 2
    c = spec["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert c["resources"]["limits"] == {"nvidia.com/gpu": 4}
    assert {"name": "NCCL_DEBUG", "value": "INFO"} in c["env"]
    assert jobs["ddp-1n"].scale == 1 and jobs["ddp-3n"].scale == 3 and jobs["ddp-3n"].world_size == 12
    assert "--steps 7" in jobs["ddp-3n"].command()
    assert jobs["tf-smoke"].pods == [f"mlplat-tf-smoke-worker-{i}" for i in range(3)]
    assert jobs["trainjob"].pods == [] and jobs["trainjob"].manifest["spec"]["trainer"]["numNodes"] == 3
    for j in jobs.values():
        assert j.manifest["metadata"]["namespace"] == tplan.NAMESPACE
        assert j.manifest["metadata"]["labels"]["mlplat.io/run-id"] == "r1"
        assert j.name not in ("", None) and len(j.name) <= 50


def test_one_node_scales_across_its_gpus():
    jobs = {j.key: j for j in tplan.validation_jobs(Validation(), tplan.cluster_layout({"a": 8}), run_id="r")}
    assert [k for k in jobs if k.startswith("ddp-")] == ["ddp-1g", "ddp-1n"]
    assert (jobs["ddp-1g"].scale, jobs["ddp-1n"].scale, jobs["ddp-1g"].scale_unit) == (1, 8, "gpus")
    assert jobs["tf-smoke"].nodes == 2  # two workers on the one node, one GPU each
    assert "affinity" not in jobs["tf-smoke"].manifest["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]
    single = {j.key for j in tplan.validation_jobs(Validation(), tplan.cluster_layout({"a": 1}), run_id="r")}
    assert single == {"sweep", "ddp-1n", "tf-smoke", "trainjob"}


def test_cpu_layout_asks_for_no_gpu():
    jobs = tplan.validation_jobs(Validation(), tplan.cluster_layout({}, cpu_nodes=["a", "b"]), run_id="r")
    for j in jobs:
        assert "nvidia.com/gpu" not in str(j.manifest)
    assert jobs[0].manifest["spec"]["nprocPerNode"] == "2"


def test_the_lab_serves_the_pods_the_phase_creates():
    """The lab names its log files from the params; the phase from the API's GPU inventory, which on
    the lab is every node with lab.simulated_gpus: the same pods."""
    from mlplat.lab.workload_logs import lab_jobs
    from mlplat.params.schema import Params

    p = Params.model_validate({"hosts": [{"name": "lab-1", "address": "127.0.9.1", "roles": ["control-plane", "worker"]},
                                         {"name": "lab-2", "address": "127.0.9.2", "roles": ["worker"]}],
                               "lab": {"state_dir": "/tmp/x", "simulated_gpus": 4}})
    phase_side = tplan.validation_jobs(p.validation, tplan.cluster_layout({"lab-1": 4, "lab-2": 4}), run_id="x")
    assert [(j.name, j.pods) for j in lab_jobs(p)] == [(j.name, j.pods) for j in phase_side]


@pytest.fixture(scope="module")
def bundle_crds(offline_bundle):
    from mlplat.kubeflow.source import SourceError, offline

    try:
        root = offline(None).root
    except SourceError as e:
        pytest.skip(f"offline bundle not found: {e}")
    import yaml
    from mlplat.phases.training_validation import CRD_FILES

    return {k: yaml.safe_load((root / f).read_text()) for k, f in CRD_FILES.items()}


@pytest.mark.parametrize("gpus", [{"a": 4, "b": 4}, {"a": 8}, {}])
def test_every_manifest_fits_the_bundle_crds(bundle_crds, gpus):
    layout = tplan.cluster_layout(gpus, cpu_nodes=["a", "b"])
    for j in tplan.validation_jobs(Validation(nccl_env={"NCCL_DEBUG": "INFO", "NCCL_IB_DISABLE": "1"}), layout, run_id="r"):
        assert crd_problems(j.manifest, bundle_crds[j.kind]) == [], j.key
