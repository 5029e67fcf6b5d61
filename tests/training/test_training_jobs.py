"""Job builders against the CRDs of the offline bundle (Kubeflow 26.03: training operator v1 CRDs,
Trainer v2 CRDs), the workloads ConfigMap, and the workload scripts as files (no torch needed)."""

from __future__ import annotations

import importlib.util
import json
import py_compile
import subprocess
import sys

import pytest
import yaml

from mlplat.training import jobs
from mlplat.training.jobs import crd_problems, label_selector, pytorchjob, tfjob, trainjob, workloads_configmap
from training_helpers import WORKLOADS, clean_env

NS = "mlplat-validation"


def _load_crds(paths):
    out = {}
    for p in paths:
        for doc in yaml.safe_load_all(p.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                out[doc["spec"]["names"]["kind"]] = doc
    return out


@pytest.fixture(scope="module")
def v1_crds(kubeflow_manifests):
    d = kubeflow_manifests / "applications" / "training-operator" / "upstream" / "base" / "crds"
    crds = _load_crds(sorted(d.glob("*.yaml")))
    assert {"PyTorchJob", "TFJob"} <= set(crds)
    return crds


@pytest.fixture(scope="module")
def trainer_crds(kubeflow_manifests):
    d = kubeflow_manifests / "applications" / "trainer" / "upstream" / "base" / "crds"
    crds = _load_crds(sorted(d.glob("*.yaml")))
    assert {"TrainJob", "ClusterTrainingRuntime"} <= set(crds)
    return crds


@pytest.fixture(scope="module")
def torch_runtime(kubeflow_manifests):
    p = kubeflow_manifests / "applications" / "trainer" / "upstream" / "base" / "runtimes" / "torch_distributed.yaml"
    return yaml.safe_load(p.read_text())


# --- PyTorchJob --------------------------------------------------------------------------------

def test_pytorchjob_gpu_nodes_valid_by_crd(v1_crds):
    job = pytorchjob("ddp-4n", NS, image="registry.local/pytorch:2.9", run_id="r1", nodes=4, gpus_per_node=8,
                     configmap="mlplat-workloads", args=["--steps", 50],
                     nccl_env={"NCCL_DEBUG": "INFO", "NCCL_SOCKET_IFNAME": "eth0", "NCCL_IB_DISABLE": False})
    assert crd_problems(job, v1_crds["PyTorchJob"]) == []
    spec = job["spec"]
    assert spec["nprocPerNode"] == "8"
    assert spec["pytorchReplicaSpecs"]["Master"]["replicas"] == 1
    assert spec["pytorchReplicaSpecs"]["Worker"]["replicas"] == 3
    assert spec["runPolicy"] == {"cleanPodPolicy": "None", "backoffLimit": 0, "activeDeadlineSeconds": 1800}
    pod = spec["pytorchReplicaSpecs"]["Worker"]["template"]
    c = pod["spec"]["containers"][0]
    assert c["name"] == "pytorch" and c["image"] == "registry.local/pytorch:2.9"
    assert c["command"] == ["torchrun", "/opt/mlplat/workloads/ddp_bench.py", "--steps", "50"]
    assert c["resources"] == {"limits": {"nvidia.com/gpu": 8}}
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["NCCL_DEBUG"] == "INFO" and env["NCCL_SOCKET_IFNAME"] == "eth0" and env["NCCL_IB_DISABLE"] == "0"
    assert env["PET_RDZV_CONF"] == "timeout=300" and env["MLPLAT_RDZV_TIMEOUT"] == "300"
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}} in pod["spec"]["volumes"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    assert {"name": "workloads", "mountPath": "/opt/mlplat/workloads", "readOnly": True} in c["volumeMounts"]
    anti = pod["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti["topologyKey"] == "kubernetes.io/hostname"
    assert anti["labelSelector"]["matchLabels"] == {"mlplat.io/job": "ddp-4n"}
    assert pod["metadata"]["labels"]["mlplat.io/job"] == "ddp-4n"
    assert pod["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    assert job["metadata"]["labels"]["mlplat.io/run-id"] == "r1"
    # Master and Worker templates are equal but not the same object (no YAML anchors)
    assert spec["pytorchReplicaSpecs"]["Master"]["template"] == pod
    assert spec["pytorchReplicaSpecs"]["Master"]["template"] is not pod
    assert "&id" not in yaml.safe_dump(job)


def test_pytorchjob_cpu_single_node(v1_crds):
    job = pytorchjob("ddp-1n", NS, image="img", run_id="r1", nodes=1, procs_per_node=2, cpu="2", memory="4Gi",
                     shm_size=None, configmap=None)
    assert crd_problems(job, v1_crds["PyTorchJob"]) == []
    assert list(job["spec"]["pytorchReplicaSpecs"]) == ["Master"]
    assert job["spec"]["nprocPerNode"] == "2"
    pod = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert "affinity" not in pod and "volumes" not in pod
    assert pod["containers"][0]["resources"] == {"limits": {"cpu": "2", "memory": "4Gi"},
                                                 "requests": {"cpu": "2", "memory": "4Gi"}}


def test_crd_check_catches_mistakes(v1_crds):
    job = pytorchjob("ddp-2n", NS, image="img", run_id="r1", nodes=2)
    job["spec"]["nprocPerNode"] = 2                           # an int where the CRD wants a string
    job["spec"]["runPolicy"]["cleanPodPolicyy"] = "All"       # a typo
    del job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["name"]
    problems = crd_problems(job, v1_crds["PyTorchJob"])
    assert any("nprocPerNode" in p and "string" in p for p in problems)
    assert any("cleanPodPolicyy" in p for p in problems)
    assert any("'name' is a required property" in p for p in problems)
    assert crd_problems(job, v1_crds["TFJob"]) == ["PyTorchJob kubeflow.org/v1 is not a TFJob of kubeflow.org"]


def test_builders_refuse_bad_input():
    with pytest.raises(ValueError, match="job name"):
        pytorchjob("DDP_bench", NS, image="img", run_id="r1")
    with pytest.raises(ValueError, match="one process per GPU"):
        pytorchjob("ddp", NS, image="img", run_id="r1", gpus_per_node=8, procs_per_node=2)
    with pytest.raises(ValueError, match="unknown workload"):
        pytorchjob("ddp", NS, image="img", run_id="r1", script="train.py")
    with pytest.raises(ValueError, match="environment variable name"):
        pytorchjob("ddp", NS, image="img", run_id="r1", nccl_env={"NCCL DEBUG": "INFO"})
    with pytest.raises(ValueError, match="label values"):
        pytorchjob("ddp", NS, image="img", run_id="run id with spaces")
    with pytest.raises(ValueError, match="cleanPodPolicy"):
        pytorchjob("ddp", NS, image="img", run_id="r1", clean_pod_policy="Always")


# --- TFJob -------------------------------------------------------------------------------------

def test_tfjob_valid_by_crd(v1_crds):
    job = tfjob("tf-smoke", NS, image="tensorflow/tensorflow:2.21.0", run_id="r1", workers=2,
                configmap="mlplat-workloads", args=["--steps", 5], env={"TF_CPP_MIN_LOG_LEVEL": 1})
    assert crd_problems(job, v1_crds["TFJob"]) == []
    w = job["spec"]["tfReplicaSpecs"]["Worker"]
    assert w["replicas"] == 2 and w["restartPolicy"] == "Never"
    c = w["template"]["spec"]["containers"][0]
    assert c["name"] == "tensorflow"
    assert c["command"] == ["python3", "/opt/mlplat/workloads/tf_mwms_smoke.py", "--steps", "5"]
    assert c["ports"] == [{"name": "tfjob-port", "containerPort": 2222, "protocol": "TCP"}]
    assert "affinity" in w["template"]["spec"]


# --- TrainJob ----------------------------------------------------------------------------------

def test_trainjob_valid_by_trainer_crd(trainer_crds, torch_runtime):
    job = trainjob("ddp-v2", NS, image="img", run_id="r1", nodes=2, gpus_per_node=4, configmap="mlplat-workloads",
                   args=["--steps", "20"], nccl_env={"NCCL_DEBUG": "INFO"})
    assert crd_problems(job, trainer_crds["TrainJob"]) == []
    spec = job["spec"]
    assert spec["runtimeRef"] == {"name": "torch-distributed", "apiGroup": "trainer.kubeflow.org",
                                  "kind": "ClusterTrainingRuntime"}
    assert spec["trainer"]["numNodes"] == 2 and spec["trainer"]["numProcPerNode"] == 4
    assert spec["trainer"]["resourcesPerNode"] == {"limits": {"nvidia.com/gpu": 4}}
    # the overrides name the job and container that the bundled torch-distributed runtime has
    rt_jobs = torch_runtime["spec"]["template"]["spec"]["replicatedJobs"]
    rt_containers = {c["name"] for j in rt_jobs for c in j["template"]["spec"]["template"]["spec"]["containers"]}
    ov = spec["podTemplateOverrides"][0]
    assert ov["targetJobs"] == [{"name": j["name"]} for j in rt_jobs]
    assert {c["name"] for c in ov["spec"]["containers"]} <= rt_containers
    assert torch_runtime["metadata"]["name"] == spec["runtimeRef"]["name"]
    assert crd_problems(torch_runtime, trainer_crds["ClusterTrainingRuntime"]) == []


def test_trainjob_cpu_and_bad_runtime_kind(trainer_crds):
    job = trainjob("ddp-v2-cpu", NS, image="img", run_id="r1", nodes=1, procs_per_node=2, configmap=None, shm_size=None)
    assert crd_problems(job, trainer_crds["TrainJob"]) == []
    assert "podTemplateOverrides" in job["spec"] and job["spec"]["podTemplateOverrides"][0]["spec"] == {}
    job["spec"]["trainer"]["numNodes"] = "two"
    assert any("numNodes" in p for p in crd_problems(job, trainer_crds["TrainJob"]))


# --- ConfigMap, labels, scripts ----------------------------------------------------------------

def test_workloads_configmap_holds_the_files():
    cm = workloads_configmap("mlplat-workloads", NS, "r1")
    assert set(cm["data"]) == {"ddp_bench.py", "allreduce_sweep.py", "tf_mwms_smoke.py"}
    for name, text in cm["data"].items():
        assert text == (WORKLOADS / name).read_text()
    assert cm["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "mlplat"
    # a ConfigMap holds at most 1 MiB
    assert len(json.dumps(cm)) < 1 << 20
    assert jobs.workload_path("ddp_bench.py").endswith("workloads/ddp_bench.py")


def test_label_selector_matches_labels():
    sel = dict(kv.split("=") for kv in label_selector("r7").split(","))
    assert sel.items() <= jobs.labels("r7", job="x").items()


@pytest.mark.parametrize("name", ["ddp_bench.py", "allreduce_sweep.py", "tf_mwms_smoke.py"])
def test_workload_scripts_compile_and_stand_alone(name, tmp_path):
    path = WORKLOADS / name
    py_compile.compile(str(path), cfile=str(tmp_path / "x.pyc"), doraise=True)
    text = path.read_text()
    assert "mlplat" not in "".join(l for l in text.splitlines() if l.lstrip().startswith(("import", "from")))
    # --help works without torch/tensorflow imported at module level
    out = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True, timeout=30,
                         env=clean_env())
    assert out.returncode == 0 and "usage:" in out.stdout


def _load(name):
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), WORKLOADS / name)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tf_config_parse():
    tf = _load("tf_mwms_smoke.py")
    # TF_CONFIG as the training operator writes it (genTFConfigJSONStr: cluster, task, environment)
    cfg = json.dumps({"cluster": {"worker": ["tf-smoke-worker-0.ns.svc:2222", "tf-smoke-worker-1.ns.svc:2222"]},
                      "task": {"type": "worker", "index": 1}, "environment": "cloud"})
    got = tf.parse_tf_config(cfg)
    assert got == {"workers": ["tf-smoke-worker-0.ns.svc:2222", "tf-smoke-worker-1.ns.svc:2222"],
                   "task_type": "worker", "task_index": 1, "rank": 1, "num_workers": 2, "is_chief": False}
    chief = tf.parse_tf_config(json.dumps({"cluster": {"chief": ["c:2222"], "worker": ["w0:2222"]},
                                           "task": {"type": "worker", "index": 0}}))
    assert chief["rank"] == 1 and chief["num_workers"] == 2 and chief["workers"] == ["c:2222", "w0:2222"]
    for bad, msg in [(None, "not set"), ("{", "not JSON"),
                     ('{"sparseCluster": {"worker": {"0": "w:2222"}}, "task": {"type": "worker", "index": 0}}',
                      "enableDynamicWorker"),
                     ('{"cluster": {"worker": ["a"], "ps": ["p"]}, "task": {"type": "worker", "index": 0}}', "'ps'"),
                     ('{"cluster": {"worker": ["a"]}, "task": {"type": "worker", "index": 3}}', "not in the cluster"),
                     ('{"cluster": {"worker": ["a"]}, "task": {"type": "evaluator", "index": 0}}', "chief/worker")]:
        with pytest.raises(ValueError, match=msg):
            tf.parse_tf_config(bad)


def test_tf_smoke_without_tf_config_fails_clearly():
    out = subprocess.run([sys.executable, str(WORKLOADS / "tf_mwms_smoke.py")], capture_output=True, text=True,
                         timeout=30, env=clean_env())
    assert out.returncode == 2
    assert '"kind":"error"' in out.stdout and "TF_CONFIG is not set" in out.stderr


@pytest.mark.parametrize("name", ["ddp_bench.py", "allreduce_sweep.py"])
def test_plain_python_with_nproc_per_node_is_refused(name):
    """A PyTorchJob pod with nprocPerNode > 1 whose command is python, not torchrun: its WORLD_SIZE
    counts processes that never start. Refused at once (before torch is even imported)."""
    env = clean_env(MASTER_ADDR="127.0.0.1", MASTER_PORT="29999", RANK="0", WORLD_SIZE="16",
                    PET_NPROC_PER_NODE="8", PET_NNODES="2", PET_NODE_RANK="0")
    out = subprocess.run([sys.executable, str(WORKLOADS / name)], capture_output=True, text=True, timeout=30, env=env)
    assert out.returncode == 2
    assert "not started by torchrun" in out.stderr and "PET_NPROC_PER_NODE=8" in out.stderr
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    assert rec["kind"] == "error" and rec["stage"] == "setup" and rec["schema"] == 1


@pytest.mark.parametrize("name", ["ddp_bench.py", "allreduce_sweep.py"])
def test_watchdog_ends_a_hung_stage(name):
    """The watchdog behind the rendezvous timeout: when torch does not return, the process ends
    with the stage's message and exit code 3 (no torch needed to show it)."""
    code = (f"import importlib.util, time\n"
            f"spec = importlib.util.spec_from_file_location('w', {str(WORKLOADS / name)!r})\n"
            f"w = importlib.util.module_from_spec(spec); spec.loader.exec_module(w)\n"
            f"w.Watchdog().arm('rendezvous', 0.5, 'no rendezvous after 0.5 s', rank=1, world_size=2)\n"
            f"time.sleep(30)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=25, env=clean_env())
    assert out.returncode == 3
    rec = json.loads(out.stdout.strip())
    assert rec == {"schema": 1, "kind": "error", "stage": "rendezvous", "message": "no rendezvous after 0.5 s",
                   "rank": 1, "world_size": 2}
    assert "ERROR rendezvous: no rendezvous after 0.5 s" in out.stderr
