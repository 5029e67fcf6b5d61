"""Builders for the phase-60 jobs, as plain dicts ready for server-side apply.

* :func:`workloads_configmap`: the workload scripts (``workloads/*.py``) in one ConfigMap, mounted
  read-only at :data:`WORKLOAD_DIR` by every job below, so any image with torch (or tensorflow)
  runs them unchanged. Baking them into the image instead works the same: pass ``configmap=None``.
* :func:`pytorchjob`: ``kubeflow.org/v1`` PyTorchJob, one Master and ``nodes - 1`` Workers, one pod
  per node, ``nprocPerNode`` processes per pod started by torchrun.
* :func:`tfjob`: ``kubeflow.org/v1`` TFJob running the MultiWorkerMirroredStrategy smoke test.
* :func:`trainjob`: ``trainer.kubeflow.org/v1alpha1`` TrainJob (Trainer v2) on the
  ``torch-distributed`` ClusterTrainingRuntime.
* :func:`crd_problems`: a structural check of such an object against a CRD's openAPIV3Schema
  (types, required fields, unknown fields), for plan mode and tests; the API server's
  dry run remains the authority (CEL rules and defaulting are not evaluated here).

Every object carries :func:`labels` (``app.kubernetes.io/managed-by: mlplat`` plus the run id) so
that :func:`label_selector` finds all of a run's jobs for cleanup.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Iterable, Mapping

MANAGED_BY = "mlplat"
LABEL_RUN = "mlplat.io/run-id"
LABEL_JOB = "mlplat.io/job"
LABEL_WORKLOAD = "mlplat.io/workload"
WORKLOAD_DIR = "/opt/mlplat/workloads"
WORKLOADS = ("ddp_bench.py", "allreduce_sweep.py", "tf_mwms_smoke.py")
TORCH_DISTRIBUTED_RUNTIME = "torch-distributed"
#: The training operator's defaults (PytorchJobDefaultPort, TFJobDefaultPort).
PYTORCH_PORT = 23456
TF_PORT = 2222

_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def _plain(obj: dict) -> dict:
    # A JSON round trip, not deepcopy: deepcopy keeps shared sub-objects shared (Master and Worker
    # would hold one template, and YAML dumps would show anchors).
    return json.loads(json.dumps(obj))


# --- names, labels, env ------------------------------------------------------------------------

def _check_name(name: str, limit: int = 50) -> str:
    # Pods are named <job>-master-0 / <job>-worker-12 and Services after them; 50 leaves room.
    if not isinstance(name, str) or not _DNS1035.match(name) or len(name) > limit:
        raise ValueError(f"job name {name!r}: lower-case letters, digits and '-', starting with a "
                         f"letter, at most {limit} characters")
    return name


def labels(run_id: str, job: str | None = None, workload: str | None = None) -> dict[str, str]:
    """The labels every object of a phase-60 run carries."""
    out = {"app.kubernetes.io/managed-by": MANAGED_BY, "app.kubernetes.io/part-of": "mlplat-training-validation",
           LABEL_RUN: run_id}
    if job:
        out[LABEL_JOB] = job
    if workload:
        out[LABEL_WORKLOAD] = workload
    bad = {k: v for k, v in out.items() if len(v) > 63 or not _LABEL_VALUE.match(v)}
    if bad:
        raise ValueError(f"label values must be <= 63 characters of [A-Za-z0-9-_.]: {bad}")
    return out


def label_selector(run_id: str | None = None) -> str:
    """Selects what mlplat created for phase 60 (one run's objects when ``run_id`` is given)."""
    sel = f"app.kubernetes.io/managed-by={MANAGED_BY},app.kubernetes.io/part-of=mlplat-training-validation"
    return sel + (f",{LABEL_RUN}={run_id}" if run_id else "")


def env_list(*envs: Mapping[str, object] | None) -> list[dict]:
    """Kubernetes env entries from dicts (later ones win), values as strings, sorted by name.

    ``{"NCCL_DEBUG": "INFO", "NCCL_IB_DISABLE": 1}`` -> ``[{"name": "NCCL_DEBUG", "value": "INFO"},
    {"name": "NCCL_IB_DISABLE", "value": "1"}]``. Booleans become ``"1"``/``"0"`` as NCCL reads them.
    """
    merged: dict[str, str] = {}
    for env in envs:
        for k, v in (env or {}).items():
            if not isinstance(k, str) or not _ENV_NAME.match(k):
                raise ValueError(f"environment variable name {k!r} is not valid")
            if v is None:
                continue
            merged[k] = ("1" if v else "0") if isinstance(v, bool) else str(v)
    return [{"name": k, "value": merged[k]} for k in sorted(merged)]


# --- the workloads ConfigMap -------------------------------------------------------------------

def workload_source(name: str) -> str:
    """The text of one workload script shipped in ``mlplat.training.workloads``."""
    if name not in WORKLOADS:
        raise ValueError(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}")
    return resources.files("mlplat.training.workloads").joinpath(name).read_text(encoding="utf-8")


def workload_path(name: str) -> str:
    """Where a workload script is on this machine (to run it locally, e.g. with torchrun)."""
    workload_source(name)
    return str(resources.files("mlplat.training.workloads").joinpath(name))


def workloads_configmap(name: str, namespace: str, run_id: str,
                        scripts: Iterable[str] = WORKLOADS) -> dict:
    """A ConfigMap holding the workload scripts, keyed by file name."""
    _check_name(name, 63)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, "labels": labels(run_id, job=name)},
        "data": {s: workload_source(s) for s in scripts},
    }


# --- pod template pieces -----------------------------------------------------------------------

def _volumes(configmap: str | None, shm_size: str | None) -> tuple[list[dict], list[dict]]:
    vols, mounts = [], []
    if configmap:
        vols.append({"name": "workloads", "configMap": {"name": configmap, "defaultMode": 0o555}})
        mounts.append({"name": "workloads", "mountPath": WORKLOAD_DIR, "readOnly": True})
    if shm_size:
        # NCCL and torch DataLoader workers use /dev/shm; the runtime's default is 64 MiB.
        vols.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm_size}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    return vols, mounts


def _resources(gpus: int, cpu: str | None, memory: str | None) -> dict:
    limits: dict[str, object] = {}
    requests: dict[str, object] = {}
    if gpus > 0:
        limits["nvidia.com/gpu"] = gpus
    if cpu:
        requests["cpu"] = limits["cpu"] = cpu
    if memory:
        requests["memory"] = limits["memory"] = memory
    out = {}
    if limits:
        out["limits"] = limits
    if requests:
        out["requests"] = requests
    return out


def _anti_affinity(job: str) -> dict:
    """Every pod of the job on a different node (required, not preferred: a 2-node benchmark
    with both pods on one node would measure the wrong thing)."""
    return {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
        "labelSelector": {"matchLabels": {LABEL_JOB: job}},
        "topologyKey": "kubernetes.io/hostname",
    }]}}


def _pod_template(*, job: str, meta_labels: dict, container: dict, volumes: list[dict],
                  anti_affinity: bool, node_selector: Mapping[str, str] | None,
                  tolerations: list[dict] | None, istio_sidecar: bool,
                  image_pull_secrets: list[str] | None) -> dict:
    spec: dict = {"containers": [container], "restartPolicy": "Never"}
    if volumes:
        spec["volumes"] = volumes
    if anti_affinity:
        spec["affinity"] = _anti_affinity(job)
    if node_selector:
        spec["nodeSelector"] = dict(node_selector)
    if tolerations:
        spec["tolerations"] = list(tolerations)
    if image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": s} for s in image_pull_secrets]
    # An Istio sidecar in a training pod intercepts the rendezvous and NCCL's own sockets (and
    # keeps the pod Running after training ends), so it is off unless asked for.
    annotations = {"sidecar.istio.io/inject": "true" if istio_sidecar else "false"}
    return {"metadata": {"labels": dict(meta_labels), "annotations": annotations}, "spec": spec}


def _run_policy(clean_pod_policy: str, backoff_limit: int, active_deadline_seconds: int | None,
                ttl_seconds_after_finished: int | None) -> dict:
    if clean_pod_policy not in ("None", "Running", "All"):
        raise ValueError(f"cleanPodPolicy {clean_pod_policy!r}: None, Running or All")
    rp: dict = {"cleanPodPolicy": clean_pod_policy, "backoffLimit": int(backoff_limit)}
    if active_deadline_seconds:
        rp["activeDeadlineSeconds"] = int(active_deadline_seconds)
    if ttl_seconds_after_finished is not None:
        rp["ttlSecondsAfterFinished"] = int(ttl_seconds_after_finished)
    return rp


# --- PyTorchJob --------------------------------------------------------------------------------

def pytorchjob(name: str, namespace: str, *, image: str, run_id: str, nodes: int = 1,
               gpus_per_node: int = 0, procs_per_node: int | None = None,
               script: str = "ddp_bench.py", args: Iterable[str] = (),
               configmap: str | None = None, nccl_env: Mapping[str, object] | None = None,
               env: Mapping[str, object] | None = None, cpu: str | None = None,
               memory: str | None = None, shm_size: str | None = "2Gi",
               anti_affinity: bool | None = None, rdzv_timeout_s: int = 300,
               clean_pod_policy: str = "None", backoff_limit: int = 0,
               active_deadline_seconds: int | None = 1800,
               ttl_seconds_after_finished: int | None = None,
               image_pull_policy: str = "IfNotPresent", node_selector: Mapping[str, str] | None = None,
               tolerations: list[dict] | None = None, istio_sidecar: bool = False,
               image_pull_secrets: list[str] | None = None) -> dict:
    """A PyTorchJob running a workload script on ``nodes`` pods (1 Master + ``nodes-1`` Workers).

    ``nprocPerNode`` is ``gpus_per_node`` (one process per GPU, NCCL) or, without GPUs,
    ``procs_per_node`` (default 1; gloo on the CPU). Each pod runs ``torchrun <script> <args>``:
    torchrun reads the ``PET_NNODES``/``PET_NODE_RANK``/``PET_NPROC_PER_NODE``/``PET_MASTER_*``
    variables the operator injects and starts the processes, each with its own ``RANK``,
    ``LOCAL_RANK`` and ``WORLD_SIZE``. ``PET_RDZV_CONF=timeout=<rdzv_timeout_s>`` bounds torchrun's
    own rendezvous (a missing pod fails the job instead of hanging it) and ``MLPLAT_RDZV_TIMEOUT``
    the script's.

    ``cleanPodPolicy`` defaults to ``None`` so the finished pods (and their logs) stay until the
    job is deleted: collect the logs first, then delete by :func:`label_selector`.
    ``anti_affinity`` (default: on when ``nodes > 1``) forces one pod per node.
    """
    _check_name(name)
    if nodes < 1:
        raise ValueError("nodes must be at least 1")
    if gpus_per_node < 0:
        raise ValueError("gpus_per_node must be >= 0")
    if gpus_per_node and procs_per_node and procs_per_node != gpus_per_node:
        raise ValueError("with GPUs, one process per GPU: leave procs_per_node unset")
    nproc = gpus_per_node or procs_per_node or 1
    if script not in WORKLOADS:
        raise ValueError(f"unknown workload {script!r}; known: {', '.join(WORKLOADS)}")
    workload = script.removesuffix(".py").replace("_", "-")
    meta_labels = labels(run_id, job=name, workload=workload)
    vols, mounts = _volumes(configmap, shm_size)
    container = {
        "name": "pytorch",  # the operator finds its port on the container of this name
        "image": image,
        "imagePullPolicy": image_pull_policy,
        "command": ["torchrun", f"{WORKLOAD_DIR}/{script}", *map(str, args)],
        "env": env_list(nccl_env, {"MLPLAT_RDZV_TIMEOUT": rdzv_timeout_s,
                                   "PET_RDZV_CONF": f"timeout={int(rdzv_timeout_s)}"}, env),
        "ports": [{"name": "pytorchjob-port", "containerPort": PYTORCH_PORT, "protocol": "TCP"}],
    }
    res = _resources(gpus_per_node, cpu, memory)
    if res:
        container["resources"] = res
    if mounts:
        container["volumeMounts"] = mounts
    template = _pod_template(job=name, meta_labels=meta_labels, container=container, volumes=vols,
                             anti_affinity=nodes > 1 if anti_affinity is None else anti_affinity,
                             node_selector=node_selector, tolerations=tolerations,
                             istio_sidecar=istio_sidecar, image_pull_secrets=image_pull_secrets)
    replicas = {"Master": {"replicas": 1, "restartPolicy": "Never", "template": template}}
    if nodes > 1:
        replicas["Worker"] = {"replicas": nodes - 1, "restartPolicy": "Never", "template": template}
    return _plain({
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": name, "namespace": namespace, "labels": meta_labels},
        "spec": {
            "nprocPerNode": str(nproc),  # a string in the CRD: "auto", "cpu", "gpu" or a number
            "pytorchReplicaSpecs": replicas,
            "runPolicy": _run_policy(clean_pod_policy, backoff_limit, active_deadline_seconds,
                                     ttl_seconds_after_finished),
        },
    })


# --- TFJob -------------------------------------------------------------------------------------

def tfjob(name: str, namespace: str, *, image: str, run_id: str, workers: int = 2,
          gpus_per_worker: int = 0, script: str = "tf_mwms_smoke.py", args: Iterable[str] = (),
          configmap: str | None = None, env: Mapping[str, object] | None = None,
          cpu: str | None = None, memory: str | None = None, shm_size: str | None = "1Gi",
          anti_affinity: bool | None = None, clean_pod_policy: str = "None", backoff_limit: int = 0,
          active_deadline_seconds: int | None = 1200, ttl_seconds_after_finished: int | None = None,
          image_pull_policy: str = "IfNotPresent", node_selector: Mapping[str, str] | None = None,
          tolerations: list[dict] | None = None, istio_sidecar: bool = False,
          image_pull_secrets: list[str] | None = None) -> dict:
    """A TFJob with ``workers`` Worker replicas running the MultiWorkerMirroredStrategy smoke
    script; the operator gives each pod its ``TF_CONFIG``."""
    _check_name(name)
    if workers < 1:
        raise ValueError("workers must be at least 1")
    if script not in WORKLOADS:
        raise ValueError(f"unknown workload {script!r}; known: {', '.join(WORKLOADS)}")
    meta_labels = labels(run_id, job=name, workload=script.removesuffix(".py").replace("_", "-"))
    vols, mounts = _volumes(configmap, shm_size)
    container = {
        "name": "tensorflow",  # the operator's default container name for TFJob
        "image": image,
        "imagePullPolicy": image_pull_policy,
        "command": ["python3", f"{WORKLOAD_DIR}/{script}", *map(str, args)],
        "ports": [{"name": "tfjob-port", "containerPort": TF_PORT, "protocol": "TCP"}],
    }
    if env:
        container["env"] = env_list(env)
    res = _resources(gpus_per_worker, cpu, memory)
    if res:
        container["resources"] = res
    if mounts:
        container["volumeMounts"] = mounts
    template = _pod_template(job=name, meta_labels=meta_labels, container=container, volumes=vols,
                             anti_affinity=workers > 1 if anti_affinity is None else anti_affinity,
                             node_selector=node_selector, tolerations=tolerations,
                             istio_sidecar=istio_sidecar, image_pull_secrets=image_pull_secrets)
    return _plain({
        "apiVersion": "kubeflow.org/v1",
        "kind": "TFJob",
        "metadata": {"name": name, "namespace": namespace, "labels": meta_labels},
        "spec": {
            "tfReplicaSpecs": {"Worker": {"replicas": workers, "restartPolicy": "Never", "template": template}},
            "runPolicy": _run_policy(clean_pod_policy, backoff_limit, active_deadline_seconds,
                                     ttl_seconds_after_finished),
        },
    })


# --- TrainJob (Trainer v2) ---------------------------------------------------------------------

def trainjob(name: str, namespace: str, *, image: str, run_id: str, nodes: int = 1,
             gpus_per_node: int = 0, procs_per_node: int | None = None,
             script: str = "ddp_bench.py", args: Iterable[str] = (), configmap: str | None = None,
             runtime: str = TORCH_DISTRIBUTED_RUNTIME, runtime_kind: str = "ClusterTrainingRuntime",
             nccl_env: Mapping[str, object] | None = None, env: Mapping[str, object] | None = None,
             cpu: str | None = None, memory: str | None = None, shm_size: str | None = "2Gi",
             anti_affinity: bool | None = None, rdzv_timeout_s: int = 300,
             istio_sidecar: bool = False) -> dict:
    """A TrainJob on the ``torch-distributed`` runtime: ``numNodes`` nodes, ``numProcPerNode``
    processes each (GPUs, or ``procs_per_node`` on the CPU), ``torchrun <script>``.

    The runtime's torch plugin sets the ``PET_*`` variables torchrun reads. The script's
    ConfigMap, /dev/shm, labels and anti-affinity go in through ``podTemplateOverrides`` on the
    runtime's ``node`` job (container ``node``), as the bundled runtime names them.
    """
    _check_name(name, 63)
    if nodes < 1:
        raise ValueError("nodes must be at least 1")
    if script not in WORKLOADS:
        raise ValueError(f"unknown workload {script!r}; known: {', '.join(WORKLOADS)}")
    nproc = gpus_per_node or procs_per_node or 1
    meta_labels = labels(run_id, job=name, workload=script.removesuffix(".py").replace("_", "-"))
    trainer: dict = {
        "image": image,
        "command": ["torchrun", f"{WORKLOAD_DIR}/{script}"],
        "args": [str(a) for a in args],
        "numNodes": nodes,
        "numProcPerNode": nproc,
        "env": env_list(nccl_env, {"MLPLAT_RDZV_TIMEOUT": rdzv_timeout_s,
                                   "PET_RDZV_CONF": f"timeout={int(rdzv_timeout_s)}"}, env),
    }
    res = _resources(gpus_per_node, cpu, memory)
    if res:
        trainer["resourcesPerNode"] = res
    vols, mounts = _volumes(configmap, shm_size)
    override_spec: dict = {}
    if vols:
        override_spec["volumes"] = vols
        override_spec["containers"] = [{"name": "node", "volumeMounts": mounts}]
    if anti_affinity if anti_affinity is not None else nodes > 1:
        override_spec["affinity"] = _anti_affinity(name)
    overrides = {
        "targetJobs": [{"name": "node"}],
        "metadata": {"labels": meta_labels,
                     "annotations": {"sidecar.istio.io/inject": "true" if istio_sidecar else "false"}},
        "spec": override_spec,
    }
    return _plain({
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": {"name": name, "namespace": namespace, "labels": meta_labels},
        "spec": {
            "runtimeRef": {"name": runtime, "apiGroup": "trainer.kubeflow.org", "kind": runtime_kind},
            "trainer": trainer,
            "podTemplateOverrides": [overrides],
        },
    })


# --- structural check against a CRD ------------------------------------------------------------

def _strict(schema):
    """A copy of an openAPIV3Schema in which objects with ``properties`` refuse unknown fields
    (what the API server does with ``fieldValidation=Strict``), unless the schema says
    ``x-kubernetes-preserve-unknown-fields`` or has its own ``additionalProperties``."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out \
            and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def crd_schema(crd: Mapping, version: str) -> dict:
    """The openAPIV3Schema of ``version`` in a CustomResourceDefinition document."""
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            return v["schema"]["openAPIV3Schema"]
    served = [v["name"] for v in crd["spec"]["versions"]]
    raise KeyError(f"{crd['metadata']['name']} has no version {version!r} (it has {served})")


def crd_problems(obj: Mapping, crd: Mapping) -> list[str]:
    """What is wrong with ``obj`` by ``crd``'s schema: group/kind/version, types, enums,
    required and unknown fields. Empty when it passes. Not checked: CEL
    (``x-kubernetes-validations``) rules and anything only the server knows."""
    import jsonschema

    group = crd["spec"]["group"]
    kind = crd["spec"]["names"]["kind"]
    api = str(obj.get("apiVersion", ""))
    if obj.get("kind") != kind or not api.startswith(group + "/"):
        return [f"{obj.get('kind')} {api} is not a {kind} of {group}"]
    version = api.split("/", 1)[1]
    try:
        schema = _strict(crd_schema(crd, version))
    except KeyError as e:
        return [str(e)]
    # metadata is validated by the server itself, not by the CRD's schema.
    schema.get("properties", {}).pop("metadata", None)
    body = {k: v for k, v in obj.items() if k != "metadata"}
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
            for e in sorted(validator.iter_errors(body), key=lambda e: list(map(str, e.absolute_path)))]
