"""What phase 60 runs, as data: the jobs for a cluster's GPU layout, with their pods' names.

A pure function of the params' ``validation`` section and the GPU inventory, so everything that
needs to know the jobs in advance derives them the same way: the phase that submits them, and the
lab that serves their pods' logs on KWOK nodes (where nothing runs in a pod, the lab prepares one
log per expected pod name from a real CPU run of the same workload).

The layout (:func:`cluster_layout`): every node offering ``nvidia.com/gpu`` takes part; each pod
gets the smallest GPU count among those nodes, one process per GPU. The jobs (:func:`validation_jobs`):

* ``sweep``: the all-reduce bandwidth sweep (``allreduce_sweep.py``) across all N GPU nodes;
* ``ddp-1n`` and ``ddp-<N>n``: the DDP benchmark (``ddp_bench.py``) on one node and on N nodes,
  for scaling efficiency ``throughput(N) / (N * throughput(1))``; with one GPU node of several
  GPUs, ``ddp-1g`` (one GPU) is the baseline instead and the scaling is across GPUs;
* ``tf-smoke``: a TFJob, one worker per GPU node (two on a single node with two GPUs or more);
* ``trainjob``: the Trainer v2 TrainJob variant of the DDP benchmark on N nodes.

Names are fixed (no run id in them) so that a rerun replaces the previous run's jobs and the lab
can name its log files before the phase runs; the run id is a label.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .jobs import pytorchjob, tfjob, trainjob, workloads_configmap

NAMESPACE = "mlplat-validation"
CONFIGMAP = "mlplat-workloads"
DEFAULT_TF_IMAGE = "tensorflow/tensorflow:2.21.0-gpu"
GPU = "nvidia.com/gpu"
GPU_TOLERATION = {"key": GPU, "operator": "Exists", "effect": "NoSchedule"}

#: nccl-tests' usual sweep: 8 B to 256 MiB, doubling; 5 warm-up and 20 timed all-reduces per size.
SWEEP_ARGS = ("-b", "8", "-e", "256M", "-f", "2", "-w", "5", "-n", "20")
DDP_WARMUP = 5
TF_STEPS = 10


@dataclass(frozen=True)
class Layout:
    """Where the jobs run: ``nodes`` pods of ``procs_per_node`` processes, each pod with
    ``gpus_per_node`` GPUs (0: a CPU run, gloo)."""

    nodes: int
    gpus_per_node: int
    procs_per_node: int
    node_names: tuple[str, ...] = ()

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node

    @property
    def cpu(self) -> bool:
        return self.gpus_per_node == 0

    def describe(self) -> str:
        if self.cpu:
            return f"{self.nodes} node(s) x {self.procs_per_node} CPU process(es) (no GPU: gloo)"
        return f"{self.nodes} GPU node(s) x {self.gpus_per_node} GPU(s), one process per GPU"


def cluster_layout(gpu_nodes: Mapping[str, int], cpu_nodes: list[str] | tuple[str, ...] = (),
                   cpu_procs: int = 2) -> Layout | None:
    """The layout for a GPU inventory (node name -> allocatable ``nvidia.com/gpu``).

    Nodes with GPUs: all of them, each pod with the smallest count among them. No GPU node but
    ``cpu_nodes`` given (a lab without GPUs): a CPU run on those, ``cpu_procs`` processes per pod.
    Otherwise None (nothing to run on).
    """
    gpus = {n: int(g) for n, g in gpu_nodes.items() if int(g) > 0}
    if gpus:
        per = min(gpus.values())
        return Layout(len(gpus), per, per, tuple(sorted(gpus)))
    if cpu_nodes:
        return Layout(len(cpu_nodes), 0, max(1, int(cpu_procs)), tuple(sorted(cpu_nodes)))
    return None


@dataclass
class PlannedJob:
    """One job of the phase: what it measures, its layout, its manifest and its pods' names."""

    key: str                 # sweep | ddp-1g | ddp-1n | ddp-<N>n | tf-smoke | trainjob
    step: str                # the phase's step name ("nccl | bandwidth sweep")
    kind: str
    name: str
    namespace: str
    nodes: int
    gpus_per_node: int
    procs_per_node: int
    script: str
    args: list[str]
    manifest: dict
    purpose: str
    pods: list[str] = field(default_factory=list)   # expected pod names ([] when not predictable)
    scale: int | None = None  # the N of a DDP run in the scaling table
    scale_unit: str = "nodes"

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node

    @property
    def api_version(self) -> str:
        return self.manifest["apiVersion"]

    def command(self) -> str:
        launcher = "python3" if self.kind == "TFJob" else "torchrun"
        return " ".join([launcher, self.script, *self.args])

    def env(self) -> dict[str, str]:
        """The environment the job's container sets (NCCL settings, rendezvous timeouts)."""
        spec = self.manifest["spec"]
        if self.kind == "PyTorchJob":
            c = spec["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
        elif self.kind == "TFJob":
            c = spec["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
        else:
            c = spec["trainer"]
        return {e["name"]: e["value"] for e in c.get("env") or []}

    def row(self) -> dict[str, Any]:
        return {"job": self.key, "kind": self.kind, "name": self.name, "nodes": self.nodes,
                "gpus_per_node": self.gpus_per_node, "procs_per_node": self.procs_per_node,
                "world_size": self.world_size, "command": self.command(), "pods": ", ".join(self.pods),
                "purpose": self.purpose}


def pytorch_pods(name: str, nodes: int) -> list[str]:
    """The pods the training operator makes for a PyTorchJob: ``<name>-master-0``, then
    ``<name>-worker-<i>`` (its ``<name>-<replica type>-<index>`` scheme)."""
    return [f"{name}-master-0"] + [f"{name}-worker-{i}" for i in range(nodes - 1)]


def tf_pods(name: str, workers: int) -> list[str]:
    return [f"{name}-worker-{i}" for i in range(workers)]


def _tolerations(layout: Layout) -> list[dict] | None:
    return [dict(GPU_TOLERATION)] if not layout.cpu else None


def validation_jobs(validation: Any, layout: Layout, *, run_id: str, namespace: str = NAMESPACE,
                    configmap: str | None = CONFIGMAP, tf_image: str | None = None,
                    trainer_runtime: str = "torch-distributed") -> list[PlannedJob]:
    """The phase's jobs for ``layout``, in the order they run.

    ``validation`` is the params' ``validation`` section (``image``, ``nccl_env``, ``ddp_steps``; an
    optional ``tf_image``). Every job mounts the workloads ConfigMap ``configmap``.
    """
    image = validation.image
    nccl = dict(validation.nccl_env or {})
    tf_img = tf_image or getattr(validation, "tf_image", None) or DEFAULT_TF_IMAGE
    steps = int(validation.ddp_steps)
    n, g = layout.nodes, layout.gpus_per_node
    procs = layout.procs_per_node
    tol = _tolerations(layout)
    common = dict(image=image, run_id=run_id, configmap=configmap, nccl_env=nccl, tolerations=tol)
    if layout.cpu:
        common["procs_per_node"] = procs
    else:
        common["gpus_per_node"] = g
    jobs: list[PlannedJob] = []

    name = "mlplat-allreduce"
    args = [*SWEEP_ARGS, "--tag", name]
    jobs.append(PlannedJob(
        "sweep", "nccl | bandwidth sweep", "PyTorchJob", name, namespace, n, g, procs, "allreduce_sweep.py", args,
        pytorchjob(name, namespace, nodes=n, script="allreduce_sweep.py", args=args, **common),
        f"all-reduce bus bandwidth across all {n} node(s), 8 B to 256 MiB", pytorch_pods(name, n)))

    def ddp(key: str, name: str, nodes: int, per_node: int, scale: int, unit: str, purpose: str) -> PlannedJob:
        a = ["--steps", str(steps), "--warmup-steps", str(DDP_WARMUP), "--tag", name]
        kw = dict(common)
        if layout.cpu:
            kw["procs_per_node"] = per_node
        else:
            kw["gpus_per_node"] = per_node
        return PlannedJob(key, "ddp | scaling", "PyTorchJob", name, namespace, nodes, 0 if layout.cpu else per_node,
                          per_node, "ddp_bench.py", a,
                          pytorchjob(name, namespace, nodes=nodes, script="ddp_bench.py", args=a, **kw),
                          purpose, pytorch_pods(name, nodes), scale, unit)

    if n == 1 and procs > 1:
        jobs.append(ddp("ddp-1g", "mlplat-ddp-1g", 1, 1, 1, "gpus" if not layout.cpu else "processes",
                        "DDP baseline on one GPU (one node only: scaling is measured across its GPUs)"))
        jobs.append(ddp("ddp-1n", "mlplat-ddp-1n", 1, procs, procs, "gpus" if not layout.cpu else "processes",
                        f"DDP on one node, all {procs} GPU(s)" if not layout.cpu else f"DDP on one node, {procs} processes"))
    else:
        jobs.append(ddp("ddp-1n", "mlplat-ddp-1n", 1, procs, 1, "nodes", "DDP baseline on one node"))
        if n > 1:
            jobs.append(ddp(f"ddp-{n}n", f"mlplat-ddp-{n}n", n, procs, n, "nodes", f"DDP on all {n} nodes"))

    workers = n if n > 1 else (2 if procs > 1 else 1)
    name = "mlplat-tf-smoke"
    targs = ["--steps", str(TF_STEPS), "--tag", name]
    jobs.append(PlannedJob(
        "tf-smoke", "tfjob | smoke", "TFJob", name, namespace, workers, 0 if layout.cpu else 1, 1,
        "tf_mwms_smoke.py", targs,
        tfjob(name, namespace, image=tf_img, run_id=run_id, workers=workers, gpus_per_worker=0 if layout.cpu else 1,
              args=targs, configmap=configmap, tolerations=tol, anti_affinity=n > 1),
        f"MultiWorkerMirroredStrategy across {workers} worker(s): one all-reduce, a few training steps",
        tf_pods(name, workers)))

    name = "mlplat-trainjob-ddp"
    a = ["--steps", str(steps), "--warmup-steps", str(DDP_WARMUP), "--tag", name]
    tkw = {"procs_per_node": procs} if layout.cpu else {"gpus_per_node": g}
    jobs.append(PlannedJob(
        "trainjob", "trainjob | smoke", "TrainJob", name, namespace, n, g, procs, "ddp_bench.py", a,
        trainjob(name, namespace, image=image, run_id=run_id, nodes=n, script="ddp_bench.py", args=a,
                 configmap=configmap, nccl_env=nccl, runtime=trainer_runtime, **tkw),
        f"the DDP benchmark as a Trainer v2 TrainJob ({trainer_runtime} runtime) on {n} node(s)"))
    return jobs


def shared_objects(run_id: str, namespace: str = NAMESPACE, configmap: str = CONFIGMAP) -> list[dict]:
    """What every job needs first: the namespace and the workloads ConfigMap."""
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": {
        "app.kubernetes.io/managed-by": "mlplat", "app.kubernetes.io/part-of": "mlplat-training-validation"}}}
    return [ns, workloads_configmap(configmap, namespace, run_id)]
