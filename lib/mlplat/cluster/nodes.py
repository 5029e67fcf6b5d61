"""Nodes: the labels mlplat sets, how many GPUs each node must offer, and the verification.

Expectation of ``nvidia.com/gpu`` allocatable per node, said with its source:

- a lab whose nodes are simulated (``lab.nodes: kwok``): ``lab.simulated_gpus`` on every node,
  because KWOK advertises that many; no GPU, driver or device plugin exists there;
- anywhere else: ``hosts[].gpus`` of the params, which 00_preflight compared with what each host
  really has (``lspci`` / ``nvidia-smi``) and fails on when they differ.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..params.schema import ROLE_WORKER, Params
from ..report import StepResult, failed

GPU = "nvidia.com/gpu"
LABEL_GPU_PRESENT = "nvidia.com/gpu.present"
LABEL_GPU_MODEL = "mlplat.io/gpu-model"
LABEL_ROLE_WORKER = "node-role.kubernetes.io/worker"
SMOKE_LABEL = "mlplat.io/smoke"


@dataclass(frozen=True)
class Expected:
    gpus: int
    source: str


def simulated(params: Params) -> bool:
    """True on a lab whose nodes are KWOK's (no kubelet, no GPU, nothing runs)."""
    return params.lab is not None and params.lab.nodes == "kwok"


def real_lab(params: Params) -> bool:
    """True on a lab whose nodes are real kubelets (``mlplat lab up --nodes real``)."""
    return params.lab is not None and params.lab.nodes == "real"


def expected_gpus(params: Params) -> dict[str, Expected]:
    """Node name -> how many ``nvidia.com/gpu`` it must offer, and why that number."""
    if simulated(params):
        n = params.lab.simulated_gpus
        src = f"lab: KWOK simulates {n} GPU(s) per node (lab.simulated_gpus); the lab hosts have none"
        return {h.name: Expected(n, src) for h in params.hosts}
    return {h.name: Expected(h.gpus, "params hosts[].gpus (00_preflight checked it against the host)")
            for h in params.hosts}


def label_value(text: str) -> str:
    """A label value from free text: ``NVIDIA A100-SXM4-80GB`` -> ``NVIDIA-A100-SXM4-80GB``."""
    v = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-_.")
    return v[:63].rstrip("-_.")


def desired_labels(params: Params) -> dict[str, dict[str, str]]:
    """Node name -> the labels mlplat owns on it: the worker role, GPU presence and model."""
    exp = expected_gpus(params)
    out: dict[str, dict[str, str]] = {}
    for h in params.hosts:
        labels: dict[str, str] = {}
        if ROLE_WORKER in h.roles:
            labels[LABEL_ROLE_WORKER] = ""
        if exp[h.name].gpus > 0:
            labels[LABEL_GPU_PRESENT] = "true"
            if h.gpu_model:
                labels[LABEL_GPU_MODEL] = label_value(h.gpu_model)
        out[h.name] = labels
    return out


def label_objects(params: Params) -> list[dict]:
    """Partial Node objects for server-side apply: only the labels mlplat owns."""
    return [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": n, "labels": labels}}
            for n, labels in desired_labels(params).items()]


def release_objects(names: list[str]) -> list[dict]:
    """Partial Node objects with no fields: applied with mlplat's field manager, they release (and
    so remove) every label only mlplat owned; labels others also own stay."""
    return [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}} for n in names]


def _ready(node: dict) -> tuple[bool, str]:
    for c in (node.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            if c.get("status") == "True":
                return True, "Ready"
            msg = c.get("message")
            return False, f"NotReady ({c.get('reason') or 'no reason'}" + (f": {msg})" if msg else ")")
    return False, "NotReady (no Ready condition: the kubelet never reported)"


def _gpu_count(node: dict, key: str) -> int:
    raw = ((node.get("status") or {}).get(key) or {}).get(GPU, "0")
    try:
        return int(str(raw))
    except ValueError:
        return -1


def verify_nodes(nodes: list[dict], params: Params, step: str = "verify | nodes and GPUs") -> list[StepResult]:
    """One result per params host: the node exists, is Ready, and its ``nvidia.com/gpu``
    allocatable equals the expectation; extra nodes are listed, not judged."""
    exp = expected_gpus(params)
    by_name = {(n.get("metadata") or {}).get("name"): n for n in nodes}
    out: list[StepResult] = []
    for name, e in exp.items():
        n = by_name.get(name)
        if n is None:
            out.append(failed(name, step, f"node {name} is not in the cluster: did kubeadm join run on it, or is the "
                                          f"node registered under another name?"))
            continue
        ready, why = _ready(n)
        alloc, cap = _gpu_count(n, "allocatable"), _gpu_count(n, "capacity")
        data = {"ready": ready, "gpu_allocatable": alloc, "gpu_capacity": cap, "gpu_expected": e.gpus,
                "expected_from": e.source}
        problems = []
        if not ready:
            problems.append(why)
        if alloc != e.gpus:
            problems.append(f"{GPU} allocatable is {alloc}, expected {e.gpus} ({e.source})"
                            + (f"; capacity {cap}" if cap != alloc else ""))
        if problems:
            out.append(failed(name, step, "; ".join(problems), data=data))
        else:
            out.append(StepResult(host=name, step=step, data=data,
                                  message=f"Ready; {GPU} allocatable {alloc} = expected ({e.source})"))
    for name in sorted(set(by_name) - set(exp)):
        n = by_name[name]
        ready, why = _ready(n)
        out.append(StepResult(host=name, step=step, message=f"not in the params, not judged ({why}, "
                                                            f"{GPU} allocatable {_gpu_count(n, 'allocatable')})"))
    return out


def smoke_job(node: str, image: str, name: str, namespace: str = "default") -> dict:
    """A Job that asks for one GPU on ``node`` and lists the GPUs it got (``nvidia-smi -L``)."""
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "labels": {SMOKE_LABEL: "gpu"}},
        "spec": {
            "backoffLimit": 0, "activeDeadlineSeconds": 600, "ttlSecondsAfterFinished": 600,
            "template": {
                "metadata": {"labels": {SMOKE_LABEL: "gpu"}, "annotations": {"sidecar.istio.io/inject": "false"}},
                "spec": {
                    "restartPolicy": "Never",
                    "nodeSelector": {"kubernetes.io/hostname": node},
                    "tolerations": [{"key": GPU, "operator": "Exists", "effect": "NoSchedule"}],
                    "containers": [{"name": "gpu", "image": image, "command": ["nvidia-smi", "-L"],
                                    "imagePullPolicy": "IfNotPresent",
                                    "resources": {"limits": {GPU: 1}}}]}}}}
