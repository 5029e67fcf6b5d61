"""Phase 60, training validation: does distributed training work across the nodes, and how well.

Steps (one notebook cell each):

1. ``inventory``: ``nvidia.com/gpu`` allocatable (and in use) per node, from the API server; the
   layout of every job follows from it (all GPU nodes, one process per GPU);
2. ``jobs``: the jobs this run submits (:mod:`mlplat.training.plan`), checked by a server-side
   dry run (plan mode), or the namespace and the workloads ConfigMap applied (apply mode);
3. ``bandwidth``: a PyTorchJob running ``allreduce_sweep.py`` over all GPU nodes; bus bandwidth
   per message size (nccl-tests' definitions); ``bandwidth_plot`` draws it;
4. ``ddp``: PyTorchJobs running ``ddp_bench.py`` on 1 node and on N nodes; throughput and scaling
   efficiency ``throughput(N) / (N * throughput(1))``; ``scaling_plot`` draws it with the ideal line;
5. ``transport``: the transport NCCL really used between nodes, from the NCCL_DEBUG=INFO lines;
6. ``tfjob``: a TFJob (MultiWorkerMirroredStrategy smoke test);
7. ``trainjob``: the Trainer v2 TrainJob variant: server-side dry run where the Trainer CRDs are
   served (run for real in apply mode when the ``torch-distributed`` runtime is installed), skipped
   with the reason where they are not;
8. ``thresholds``: ``validation.min_busbw_gbps`` and ``validation.min_scaling_efficiency`` against
   the measurements, each failure naming the threshold and what to look at;
9. ``cleanup``: the jobs and the ConfigMap deleted, unless ``validation.keep_jobs``.

Every job is applied server-side with ``kubernetes.field_manager`` (never created bare), watched
until Succeeded with a progress bar, and every pod's log is collected and parsed
(:mod:`mlplat.training.parse`). Job names are fixed (``mlplat-ddp-2n``...), so a rerun first
deletes the previous run's job of the same name; the run id is a label.

Where the numbers come from is said in the verdict. The workloads' records carry the device and
backend they ran on: records from the CPU (gloo) on a real site mean the containers did not see
their GPUs, a failure; on a lab (``params.lab``) they are expected, and the verdict says plainly
that the numbers come from a CPU run and prove the pipeline, not GPU performance. On the KWOK lab
nothing runs in a pod at all: the lab serves, as each pod's log, the output of a real CPU run of
the same workload (``mlplat.lab.workload_logs``); this module never imports the lab.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import pandas as pd

from ..cluster import nodes as cnodes
from ..kube import Kube, KubeError, NoKindMatch, WaitFailed, WaitTimeout, apply, pod_logs, wait_for
from ..kube.diagnose import image_pull_problems
from ..kube.tables import pod_status
from ..report import StepResult, Table, failed, skipped
from ..training import plan as tplan
from ..training.jobs import LABEL_JOB, LABEL_RUN, crd_problems
from ..training.parse import (
    DdpRun,
    NcclDebug,
    Sweep,
    parse_nccl_debug,
    records_from_pods,
    scaling_table,
    summarise_ddp,
    summarise_sweep,
)
from . import common

NUMBER, NAME = "60", "training_validation"
ALL = "(cluster)"
GPU = "nvidia.com/gpu"
TRAINER_RUNTIME = "torch-distributed"
CRD_FILES = {
    "PyTorchJob": "applications/training-operator/upstream/base/crds/kubeflow.org_pytorchjobs.yaml",
    "TFJob": "applications/training-operator/upstream/base/crds/kubeflow.org_tfjobs.yaml",
    "TrainJob": "applications/trainer/upstream/base/crds/trainer.kubeflow.org_trainjobs.yaml",
}
DONE = {"PyTorchJob": "Succeeded", "TFJob": "Succeeded", "TrainJob": "Complete"}
PICKUP_S = 60.0

BUSBW_LOOK_AT = ("the NCCL transport table (TCP sockets instead of InfiniBand/RoCE: NCCL_IB_DISABLE, "
                 "NCCL_SOCKET_IFNAME, the RDMA devices in the pods), GPUDirect RDMA, the NIC link speed "
                 "(ethtool) and the GPU/NIC topology (nvidia-smi topo -m)")
SCALING_LOOK_AT = ("the per-rank step times (a slow node or GPU), the bus bandwidth and transport above "
                   "(communication-bound when the bus bandwidth is low), and the per-GPU batch size "
                   "(too small a batch makes any run communication-bound)")


class Plot:
    """A matplotlib figure as a notebook output: PNG through ``_repr_png_`` (no pyplot state, so it
    shows once, in JupyterLab, papermill runs and HTML exports alike), also written to the run folder."""

    def __init__(self, fig, title: str, path=None):
        import io

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        self.png = buf.getvalue()
        self.figure = fig
        self.title = title
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(self.png)

    def _repr_png_(self) -> bytes:
        return self.png

    def __repr__(self) -> str:
        return f"<plot: {self.title}" + (f", saved as {self.path}>" if self.path else ">")


def _plot(ctx, fig, name: str, title: str) -> Plot:
    path = ctx.run_dir / f"plot-{NUMBER}-{name}.png" if ctx.run_dir else None
    return Plot(fig, title, path)


@dataclass
class JobRun:
    """One submitted job: how it ended, its pods and their logs."""

    job: tplan.PlannedJob
    ok: bool = False
    message: str = ""
    pods: list[dict] = field(default_factory=list)
    logs: dict[str, str] = field(default_factory=dict)
    duration: float = 0.0

    @property
    def records(self) -> list[dict]:
        return records_from_pods(self.logs)


# --- setup -------------------------------------------------------------------------------------

def setup(params_file: str = "", mode: str = "plan", run_dir: str = "", confirm: bool = False) -> Table:
    """Load and validate the params; show the thresholds, the image and where the jobs go."""
    ctx = common.setup(NUMBER, NAME, params_file, mode, run_dir, confirm)
    ctx.extra.update(run_id=time.strftime("%Y%m%d-%H%M%S") + "-" + os.urandom(2).hex(), runs={}, submitted=[])
    v = ctx.params.validation
    table = common.header_table(ctx)
    rows = [
        {"setting": "namespace", "value": tplan.NAMESPACE},
        {"setting": "run id (label mlplat.io/run-id)", "value": ctx.extra["run_id"]},
        {"setting": "image", "value": v.image},
        {"setting": "TensorFlow image", "value": getattr(v, "tf_image", None) or tplan.DEFAULT_TF_IMAGE},
        {"setting": "thresholds", "value": f"bus bandwidth >= {v.min_busbw_gbps:g} GB/s (validation.min_busbw_gbps); "
                                           f"scaling efficiency >= {v.min_scaling_efficiency:g} "
                                           f"(validation.min_scaling_efficiency)"},
        {"setting": "NCCL environment", "value": ", ".join(f"{k}={val}" for k, val in v.nccl_env.items()) or "none"},
        {"setting": "jobs afterwards", "value": "kept (validation.keep_jobs)" if v.keep_jobs else "deleted"},
    ]
    if ctx.params.lab is not None:
        rows.append({"setting": "where the numbers come from", "value": (
            "lab: KWOK nodes run nothing; the pods' logs are a real CPU run of the same workloads served by the "
            "lab" if cnodes.simulated(ctx.params) else "lab: real nodes without GPUs: the workloads run on the CPU")})
    table.frame = pd.concat([table.frame, pd.DataFrame(rows)], ignore_index=True)
    return table


def _ctx():
    return common.context(NUMBER)


def _kube(ctx) -> Kube | None:
    """The cluster connection, or None while there is no kubeconfig (reason in extra["kube_error"])."""
    return common.kube(ctx)


def _timeout(ctx) -> float:
    """How long one job may take: KWOK finishes pods in seconds; real jobs pull images and train."""
    return 180.0 if cnodes.simulated(ctx.params) else 2400.0


def _lab(ctx) -> bool:
    return ctx.params.lab is not None


# --- 1. GPU inventory --------------------------------------------------------------------------

def _gpus(obj: dict, key: str) -> int:
    raw = ((obj.get("status") or {}).get(key) or {}).get(GPU, "0")
    try:
        return int(str(raw))
    except ValueError:
        return 0


def _requested(pods: list[dict]) -> dict[str, int]:
    """GPUs held by pods that are not finished, per node."""
    out: dict[str, int] = {}
    for p in pods:
        if (p.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        node = (p.get("spec") or {}).get("nodeName")
        if not node:
            continue
        for c in (p.get("spec") or {}).get("containers") or []:
            lim = ((c.get("resources") or {}).get("limits") or {}).get(GPU) \
                or ((c.get("resources") or {}).get("requests") or {}).get(GPU)
            if lim:
                out[node] = out.get(node, 0) + int(str(lim))
    return out


def inventory() -> Table:
    """GPUs per node as the API server sees them (allocatable, in use, model label), and the
    layout every job follows: all GPU nodes, the smallest GPU count among them per pod."""
    ctx = _ctx()
    step = "gpus | inventory"
    kube = _kube(ctx)
    frame_rows: list[dict] = []
    ctx.extra["layout"] = None
    if kube is None:
        why = ctx.extra.get("kube_error", "no kubeconfig")
        rows = [skipped(ALL, step, f"no cluster yet ({why})") if not ctx.apply else failed(ALL, step, why)]
        ctx.phase.record("inventory", rows, "GPU inventory")
        return _inventory_table(rows, frame_rows)
    try:
        node_list = kube.list(kube.resource("Node", "v1"))
        pods = kube.list(kube.resource("Pod", "v1"), field_selector="status.phase!=Succeeded,status.phase!=Failed")
    except KubeError as e:
        rows = [failed(kube.name, step, f"cannot list nodes and pods: {e}")]
        ctx.phase.record("inventory", rows, "GPU inventory")
        return _inventory_table(rows, frame_rows)
    used = _requested(pods)
    expected = cnodes.expected_gpus(ctx.params)
    rows = []
    gpu_nodes: dict[str, int] = {}
    ready_nodes: list[str] = []
    for n in sorted(node_list, key=lambda x: x["metadata"]["name"]):
        name = n["metadata"]["name"]
        ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                    for c in (n.get("status") or {}).get("conditions") or [])
        unsched = bool((n.get("spec") or {}).get("unschedulable"))
        alloc, cap = _gpus(n, "allocatable"), _gpus(n, "capacity")
        model = ((n.get("metadata") or {}).get("labels") or {}).get(cnodes.LABEL_GPU_MODEL) \
            or ((n.get("metadata") or {}).get("labels") or {}).get("nvidia.com/gpu.product", "")
        exp = expected.get(name)
        bits = [("Ready" if ready else "NotReady") + (", cordoned" if unsched else "")]
        if alloc:
            bits.append(f"{alloc} GPU(s) allocatable, {used.get(name, 0)} in use")
        else:
            bits.append("no nvidia.com/gpu")
        if exp is not None and exp.gpus != alloc:
            bits.append(f"params expect {exp.gpus} (30_kubernetes checks this)")
        usable = ready and not unsched
        if usable and alloc > 0:
            gpu_nodes[name] = alloc
        if usable:
            ready_nodes.append(name)
        rows.append(StepResult(host=name, step=step, message="; ".join(bits),
                               data={"ready": ready, "gpu_allocatable": alloc, "gpu_capacity": cap}))
        frame_rows.append({"node": name, "ready": ready, "schedulable": not unsched, "gpu_allocatable": alloc,
                           "gpu_capacity": cap, "gpu_in_use": used.get(name, 0), "gpu_model": model,
                           "gpu_expected": exp.gpus if exp else None})
    layout = tplan.cluster_layout(gpu_nodes, cpu_nodes=ready_nodes if (_lab(ctx) and not gpu_nodes) else ())
    ctx.extra["layout"] = layout
    if layout is None:
        msg = ("no Ready node offers nvidia.com/gpu: nothing to validate on. Check 30_kubernetes (device plugin, "
               "nodes and GPUs) and 20_gpu_runtime")
        rows.append(failed(kube.name, step, msg) if ctx.apply else skipped(kube.name, step, msg))
    else:
        busy = {n: used.get(n, 0) for n in layout.node_names if used.get(n, 0)}
        msg = f"layout: {layout.describe()} ({', '.join(layout.node_names)})"
        if busy:
            msg += (f"; GPUs already in use on {', '.join(f'{k} ({v})' for k, v in busy.items())}: the jobs may wait "
                    "for them (Pending: Insufficient nvidia.com/gpu)")
        rows.append(StepResult(host=kube.name, step=step, message=msg, data={"layout": layout.__dict__}))
        if cnodes.simulated(ctx.params):
            ctx.phase.note(f"lab: nvidia.com/gpu is simulated by KWOK ({ctx.params.lab.simulated_gpus} per node); the "
                           "jobs are sized for it and scheduled against it, no GPU exists")
    ctx.phase.record("inventory", rows, "GPU inventory")
    return _inventory_table(rows, frame_rows)


def _inventory_table(rows: list[StepResult], frame_rows: list[dict]) -> Table:
    if not frame_rows:
        return Table(pd.DataFrame([{"node": r.host, "status": r.status, "message": r.message} for r in rows]),
                     "GPU inventory")
    frame = pd.DataFrame(frame_rows)
    layout = [r.message for r in rows if r.host not in set(frame["node"])]
    return Table(frame, "GPU inventory" + (f" ({'; '.join(layout)})" if layout else ""), status_col=None)


# --- 2. the jobs -------------------------------------------------------------------------------

def _plan_jobs(ctx) -> dict[str, tplan.PlannedJob]:
    if "jobs" not in ctx.extra:
        if "layout" not in ctx.extra:
            inventory()
        layout = ctx.extra.get("layout")
        jobs = tplan.validation_jobs(ctx.params.validation, layout, run_id=ctx.extra["run_id"],
                                     trainer_runtime=TRAINER_RUNTIME) if layout else []
        ctx.extra["jobs"] = {j.key: j for j in jobs}
    return ctx.extra["jobs"]


def _served(kube: Kube, kind: str, api_version: str):
    try:
        return kube.discovery.resolve(api_version, kind)
    except NoKindMatch:
        return None


def _bundle_crd(ctx, kind: str) -> tuple[dict | None, str]:
    """The kind's CRD from the offline bundle's Kubeflow manifests, for a local check."""
    from ..cluster import bundle
    from ..kube import load_manifests

    cache = ctx.extra.setdefault("bundle_crds", {})
    if kind not in cache:
        try:
            root = bundle.kubeflow_manifests(ctx.params)
            docs = load_manifests((root / CRD_FILES[kind]).read_text())
            cache[kind] = (next(d for d in docs if d.get("kind") == "CustomResourceDefinition"),
                           f"Kubeflow {ctx.params.versions.kubeflow} bundle")
        except (bundle.BundleMissing, OSError, StopIteration) as e:
            cache[kind] = (None, f"no offline bundle CRD to check against ({e})")
    return cache[kind]


def _namespace_exists(kube: Kube, ns: str) -> bool:
    return kube.get_or_none(f"/api/v1/namespaces/{ns}") is not None


def _dry_run(ctx, kube: Kube, job: tplan.PlannedJob, ns_exists: bool) -> StepResult:
    """Server-side dry run of one job (in ``default`` when the phase's namespace does not exist yet);
    without its CRD, a check against the offline bundle's CRD."""
    step = job.step
    if _served(kube, job.kind, job.api_version) is None:
        crd, where = _bundle_crd(ctx, job.kind)
        owner = "Kubeflow Trainer" if job.kind == "TrainJob" else "the training operator"
        base = f"{job.kind} {job.api_version} is not served by this cluster yet ({owner}: 50_kubeflow installs it)"
        if crd is None:
            return skipped(job.name, step, f"{base}; {where}")
        problems = crd_problems(job.manifest, crd)
        if problems:
            return failed(job.name, step, f"{base}; against the CRD of the {where}: " + "; ".join(problems))
        return skipped(job.name, step, f"{base}; checked against the CRD of the {where}: valid "
                                       "(the server-side dry run happens once it is served)")
    obj = job.manifest
    where = ""
    if not ns_exists:
        obj = dict(obj, metadata=dict(obj["metadata"], namespace="default"))
        where = f" (in namespace default: {job.namespace} is created by the apply)"
    r = apply(kube, [obj], dry_run=True, progress=False, note=lambda m: None)[0]
    r.host, r.step = job.name, step
    r.message = (f"server-side dry run of {job.kind} {job.name}{where}: accepted ({r.message})" if r.ok
                 else f"server-side dry run of {job.kind} {job.name}{where} refused: {r.message}")
    return r


def jobs() -> Table:
    """The jobs of this run. Plan mode: each checked by a server-side dry run (or, where its CRD is not
    served yet, against the offline bundle's CRD). Apply mode: the namespace and the workloads
    ConfigMap applied; each job is submitted by its own step below."""
    ctx = _ctx()
    step = "jobs | manifests"
    planned = _plan_jobs(ctx)
    kube = _kube(ctx)
    rows: list[StepResult] = []
    checks: dict[str, StepResult] = {}
    if not planned:
        rows.append(skipped(ALL, step, "no layout (see the GPU inventory): no job to build"))
    elif kube is None:
        rows += [skipped(j.name, j.step, f"would submit {j.kind} {j.name}: no cluster to dry-run against")
                 for j in planned.values()]
    else:
        shared = tplan.shared_objects(ctx.extra["run_id"])
        res = apply(kube, shared, dry_run=not ctx.apply, progress=False, note=lambda m: None)
        for r in res:
            r.step = step
        rows += res
        if not ctx.apply:
            ns_exists = _namespace_exists(kube, tplan.NAMESPACE)
            for j in planned.values():
                checks[j.key] = _dry_run(ctx, kube, j, ns_exists)
                rows.append(checks[j.key])
    ctx.phase.record("jobs", rows, "Jobs")

    def said(r: StepResult) -> str:
        return r.message if r.message.startswith(r.status) else f"{r.status}: {r.message}"

    frame = pd.DataFrame([{**j.row(), "check": said(checks[k]) if k in checks
                           else ("submitted by its step below" if ctx.apply else "")}
                          for k, j in planned.items()])
    extra = [{"job": "(shared)", "kind": r.data.get("kind", ""), "name": r.data.get("name", ""),
              "check": said(r)} for r in rows if r.step == step and r.data]
    if extra:  # object columns, so the counts of the job rows stay integers
        frame = pd.concat([frame.astype(object), pd.DataFrame(extra, dtype=object)], ignore_index=True).fillna("")
    return Table(frame, f"Jobs of run {ctx.extra['run_id']} ({ctx.mode} mode)", status_col=None)


# --- running one job ---------------------------------------------------------------------------

def _job_check(kind: str):
    done = DONE[kind]

    def check(obj: dict) -> tuple[bool, str]:
        conds = {c.get("type"): c for c in (obj.get("status") or {}).get("conditions") or []}
        bad = conds.get("Failed")
        if bad and bad.get("status") == "True":
            raise WaitFailed(f"Failed: {bad.get('reason', '')}: {bad.get('message', '')}".strip(": "))
        ok = conds.get(done)
        if ok and ok.get("status") == "True":
            return True, done
        reps = (obj.get("status") or {}).get("replicaStatuses") or {}
        bits = [f"{r}: " + ", ".join(f"{v} {k}" for k, v in s.items() if isinstance(v, int) and v)
                for r, s in sorted(reps.items())]
        last = max(((c.get("lastTransitionTime") or "", t) for t, c in conds.items() if c.get("status") == "True"),
                   default=("", "submitted"))[1]
        return False, "; ".join([last] + [b for b in bits if not b.endswith(": ")])

    check.__name__ = done
    return check


PULL_POLL_S = 10.0


def _pull_watch(kube: Kube, job: tplan.PlannedJob, base):
    """``base`` (a job condition), plus: a pod that cannot get its image fails the wait at once
    (an air-gapped node never will), instead of after the whole timeout."""
    last = [0.0]

    def check(obj: dict) -> tuple[bool, str]:
        now = time.monotonic()
        if now - last[0] >= PULL_POLL_S:
            last[0] = now
            for p in _pods_of(kube, job):
                for x in image_pull_problems(p):
                    raise WaitFailed(
                        f"{p['metadata']['name']} on {(p.get('spec') or {}).get('nodeName')}: {x['reason']} for "
                        f"{x['image']} ({x['message'].strip()[:160]}): the node cannot get the "
                        "image; preload it (kubernetes.image_archives, 30_kubernetes) or mirror it")
        return base(obj)

    check.__name__ = base.__name__
    return check


def _pods_of(kube: Kube, job: tplan.PlannedJob) -> list[dict]:
    pods = kube.list(kube.resource("Pod", "v1"), job.namespace, selector=f"{LABEL_JOB}={job.name}")
    return sorted(pods, key=lambda p: p["metadata"]["name"])


def _why_pods(kube: Kube, job: tplan.PlannedJob, pods: list[dict]) -> str:
    """What the pods and their Warning events say (FailedScheduling: Insufficient nvidia.com/gpu...)."""
    bits = [f"{p['metadata']['name']} {pod_status(p)} on {(p.get('spec') or {}).get('nodeName') or '(no node)'}"
            for p in pods] or ["no pod was created"]
    try:
        ev = kube.list(kube.resource("Event", "v1"), job.namespace, field_selector="type=Warning")
        names = {p["metadata"]["name"] for p in pods} | {job.name}
        msgs = sorted({f"{e.get('reason')}: {e.get('message', '').strip()}" for e in ev
                       if (e.get("involvedObject") or {}).get("name") in names})
        bits += msgs[-5:]
    except KubeError:
        pass
    return "; ".join(bits)


def _delete_previous(kube: Kube, job: tplan.PlannedJob, timeout: float) -> str:
    """A job of the same name from an earlier run (kept, or failed) is deleted with its pods first,
    so that this run's wait and logs are this run's."""
    res = kube.resource(job.kind, job.api_version)
    if kube.get_or_none(res.path(job.namespace, job.name)) is None:
        return ""
    kube.delete(res, job.name, job.namespace, propagation="Foreground")
    wait_for(kube, job.kind, job.name, job.namespace, condition="Deleted", timeout=timeout,
             api_version=job.api_version, progress=False)
    wait_for(kube, "Pod", None, job.namespace, selector=f"{LABEL_JOB}={job.name}", condition="Deleted",
             timeout=timeout, progress=False)
    return "the previous run's job of this name deleted first; "


def _wait_picked_up(kube: Kube, job: tplan.PlannedJob, timeout: float) -> None:
    """The training operator marks a PyTorchJob/TFJob Created at once; without it, no controller
    runs (operator down, or only its CRDs installed): fail now, not after the whole timeout."""
    if job.kind not in ("PyTorchJob", "TFJob"):
        return
    try:
        wait_for(kube, job.kind, job.name, job.namespace, condition="Created", timeout=timeout,
                 api_version=job.api_version, progress=False)
    except WaitTimeout:
        raise WaitFailed(f"no controller picked it up in {timeout:g} s (no Created condition): the training "
                         "operator is not running; look at its pod (kubectl -n kubeflow get pods -l "
                         "control-plane=kubeflow-training-operator) or rerun 50_kubeflow") from None


def _run_job(ctx, job: tplan.PlannedJob) -> JobRun:
    """Submit (server-side apply), watch until done with a progress bar, collect every pod's log."""
    kube = _kube(ctx)
    run = JobRun(job)
    t0 = time.monotonic()
    timeout = _timeout(ctx)
    try:
        if _served(kube, job.kind, job.api_version) is None:
            owner = "Kubeflow Trainer" if job.kind == "TrainJob" else "the training operator (PyTorchJob, TFJob)"
            run.message = (f"the cluster does not serve {job.kind} ({job.api_version}): {owner} is not installed; "
                           "run 50_kubeflow")
            return run
        if job.kind in ctx.extra.get("unpicked", {}):
            run.message = f"{job.kind} {job.name} not submitted: {ctx.extra['unpicked'][job.kind]}"
            return run
        prefix = _delete_previous(kube, job, timeout)
        res = apply(kube, [job.manifest], progress=False, note=lambda m: None)[0]
        if not res.ok:
            run.message = f"{job.kind} {job.name} was not accepted: {res.message}"
            return run
        if job.name not in {j.name for j in ctx.extra["submitted"]}:
            ctx.extra["submitted"].append(job)
        try:
            try:
                _wait_picked_up(kube, job, min(PICKUP_S, timeout))
            except WaitFailed as e:
                ctx.extra.setdefault("unpicked", {})[job.kind] = f"an earlier {job.kind} was not picked up ({e})"
                raise
            wait_for(kube, job.kind, job.name, job.namespace, condition=_pull_watch(kube, job, _job_check(job.kind)),
                     timeout=timeout,
                     api_version=job.api_version, progress=True, note=lambda m: None)
            run.ok = True
        except WaitFailed as e:
            run.message = f"{job.kind} {job.name} failed: {e}"
        except WaitTimeout as e:
            run.message = f"{job.kind} {job.name} did not finish in {timeout:g} s: {e}"
        pods = _pods_of(kube, job)
        run.pods = [{"pod": p["metadata"]["name"], "node": (p.get("spec") or {}).get("nodeName"),
                     "status": pod_status(p)} for p in pods]
        for p in pods:
            name = p["metadata"]["name"]
            try:
                run.logs[name] = pod_logs(kube, name, job.namespace)
            except KubeError as e:
                run.logs[name] = ""
                run.message += f"; no log from {name}: {e}"
        where = ", ".join(f"{p['pod']} on {p['node']}" for p in run.pods)
        if run.ok:
            run.message = f"{prefix}{job.kind} {job.name} {DONE[job.kind]} ({where})" + run.message
        else:
            run.message += f"; pods: {_why_pods(kube, job, pods)}"
    except (KubeError, WaitTimeout, WaitFailed) as e:
        run.ok = False
        run.message = (run.message + "; " if run.message else "") + f"{job.kind} {job.name}: {e}"
    finally:
        run.duration = time.monotonic() - t0
        ctx.extra["runs"][job.key] = run
    return run


def _device_check(ctx, job: tplan.PlannedJob, first: dict | None, world: int | None, nodes: int | None,
                  problems: list[str], notes: list[str]) -> None:
    """Records against the job: which device ran, how many ranks on how many nodes."""
    if not first:
        return
    device, backend = first.get("device") or "?", first.get("backend") or "?"
    cpu = str(device).startswith("cpu")
    if cpu and (job.gpus_per_node > 0 or _lab(ctx)):
        if _lab(ctx):
            tv = first.get("torch_version", "?")
            ctx.phase.note(
                "lab: the numbers of this run come from a CPU run (backend gloo, torch "
                f"{tv}, on this machine's cores" + (", served as the KWOK pods' logs" if cnodes.simulated(ctx.params)
                                                    else "") + "): they prove the pipeline (operator, pods, logs, "
                "parsing, thresholds, verdict), not GPU performance")
        else:
            problems.append(f"ran on the CPU ({backend}) although each pod asked for {job.gpus_per_node} GPU(s): the "
                            "container does not see CUDA (an image without CUDA, or the NVIDIA runtime is not "
                            "containerd's default: 20_gpu_runtime)")
    want_world, want_nodes = job.world_size, job.nodes
    off = []
    if world is not None and world != want_world:
        off.append(f"world size {world} (the job has {want_world})")
    if nodes is not None and nodes != want_nodes:
        off.append(f"{nodes} node(s) (the job has {want_nodes})")
    if off:
        text = f"{job.name}: the records say " + " and ".join(off)
        if _lab(ctx):
            notes.append(text + " (lab: the CPU run is sized for this machine, not for the simulated GPUs)")
        else:
            problems.append(text + ": pods shared a node or processes did not start")


# --- 3. bandwidth sweep ------------------------------------------------------------------------

def _plan_row(job: tplan.PlannedJob) -> StepResult:
    return skipped(job.name, job.step, f"plan mode: would run {job.kind} {job.name}: {job.purpose}; "
                                       f"{job.nodes} pod(s) x {job.procs_per_node} process(es): {job.command()}")


def _not_possible(ctx, key: str, step: str) -> StepResult | None:
    planned = _plan_jobs(ctx)
    if key not in planned:
        return skipped(ALL, step, "no layout (see the GPU inventory): nothing to run")
    if not ctx.apply:
        return _plan_row(planned[key])
    if _kube(ctx) is None:
        return failed(ALL, step, "no cluster connection (see the GPU inventory)")
    missing = _kit_missing(ctx, planned[key])
    if missing:
        where = ctx.params.kubernetes.image_archives
        if cnodes.real_lab(ctx.params):
            return skipped(ALL, step, f"lab (real nodes): no {', '.join(missing)} in the lab's image kit: the lab "
                                      "builds only the torch trainer image, so this job runs on the KWOK lab")
        return failed(ALL, step, f"{', '.join(missing)} not in the image kit {where} (kubernetes.image_archives): "
                                 "the air-gapped nodes cannot pull it; add its archive and rerun 30_kubernetes")
    return None


def _stopped(ctx, key: str, stop: StepResult, title: str) -> Table:
    """The table of a step that did not run its job (plan mode, no layout, no image...)."""
    ctx.phase.record(key, [stop], title)
    return Table(pd.DataFrame([{"status": stop.status, "message": stop.message}]), title)


def _kit_missing(ctx, job: tplan.PlannedJob) -> list[str]:
    """Images of the job absent from the site's image kit (kubernetes.image_archives), if it has one."""
    where = ctx.params.kubernetes.image_archives
    if not where:
        return []
    from ..images import preload
    from ..images.inventory import scan

    if "kit_names" not in ctx.extra:  # read the archives once per run, not once per job
        try:
            ctx.extra["kit_names"] = set(preload.kit(where))
        except preload.KitError:
            ctx.extra["kit_names"] = None  # 30_kubernetes reports the kit's problems
    names = ctx.extra["kit_names"]
    if names is None:
        return []
    return sorted({u.image for u in scan([job.manifest]).uses if u.source == "container" and u.full not in names})


def bandwidth() -> Table:
    """All-reduce bus bandwidth across all GPU nodes, per message size (PyTorchJob)."""
    ctx = _ctx()
    step = "nccl | bandwidth sweep"
    stop = _not_possible(ctx, "sweep", step)
    if stop is not None:
        return _stopped(ctx, "bandwidth", stop, "All-reduce bandwidth")
    job = _plan_jobs(ctx)["sweep"]
    run = _run_job(ctx, job)
    sweep = summarise_sweep(run.records)
    ctx.extra["sweep"] = sweep
    problems = list(sweep.problems) if (run.ok or run.logs) else []
    notes: list[str] = []
    _device_check(ctx, job, sweep.summary or (sweep.rows[0] if sweep.rows else None), sweep.world_size, sweep.nodes,
                  problems, notes)
    for n in notes:
        ctx.phase.note(n)
    if not run.ok:
        row = failed(job.name, step, run.message + (f"; logs: {'; '.join(problems)}" if problems else ""),
                     duration=run.duration)
    elif problems:
        row = failed(job.name, step, f"{run.message}; " + "; ".join(problems) + _lab_logs_hint(ctx),
                     duration=run.duration)
    else:
        peak = max(sweep.rows, key=lambda r: r["busbw_gbps"])
        row = StepResult(host=job.name, step=step, duration=run.duration, message=(
            f"{run.message}; {len(sweep.rows)} sizes {_size(sweep.rows[0]['size_bytes'])} to "
            f"{_size(sweep.rows[-1]['size_bytes'])}: peak bus bandwidth {peak['busbw_gbps']:.3g} GB/s at "
            f"{_size(peak['size_bytes'])}, average {sweep.avg_busbw_gbps:.3g} GB/s; {sweep.world_size} ranks on "
            f"{sweep.nodes} node(s), {sweep.backend} on {sweep.device}"),
            data={"peak_busbw_gbps": peak["busbw_gbps"], "avg_busbw_gbps": sweep.avg_busbw_gbps})
    ctx.phase.record("bandwidth", [row], "All-reduce bandwidth")
    _say([row])
    if not sweep.rows:
        return Table(pd.DataFrame([{"status": row.status, "message": row.message, "hint": row.hint}]),
                     "All-reduce bandwidth")
    frame = sweep.frame()
    frame.insert(0, "size", [_size(s) for s in frame["size_bytes"]])
    return Table(frame, f"All-reduce bandwidth: {sweep.world_size} ranks on {sweep.nodes} node(s), "
                        f"{sweep.backend} on {sweep.device} (GB/s = 1e9 bytes/s)", status_col=None)


def _say(rows: list[StepResult]) -> None:
    """The job's outcome as a line above the measurements' table (the table holds the numbers)."""
    for r in rows:
        print(f"{r.status}: {r.message}" + (f"\n    hint: {r.hint}" if r.hint else ""))


def _lab_logs_hint(ctx) -> str:
    if cnodes.simulated(ctx.params):
        return (" (lab: KWOK pods run nothing; their logs come from the lab's CPU run of the workloads, prepared by "
                "`mlplat lab up`: without it the pods show the lab's default log)")
    return ""


def _size(n: int) -> str:
    for unit, f in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= f and n % f == 0:
            return f"{n // f} {unit}"
    return f"{n} B"


def bandwidth_plot():
    """Bus (and algorithm) bandwidth against message size, with the threshold."""
    ctx = _ctx()
    sweep: Sweep | None = ctx.extra.get("sweep")
    if not sweep or not sweep.rows:
        return _no_plot(ctx, "no bandwidth measured")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4))
    ax = fig.add_subplot()
    sizes = [r["size_bytes"] for r in sweep.rows]
    ax.plot(sizes, [r["busbw_gbps"] for r in sweep.rows], "o-", label="bus bandwidth")
    ax.plot(sizes, [r["algbw_gbps"] for r in sweep.rows], ".--", alpha=0.6, label="algorithm bandwidth")
    thr = ctx.params.validation.min_busbw_gbps
    ax.axhline(thr, color="red", lw=1, ls=":", label=f"validation.min_busbw_gbps = {thr:g}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("message size (bytes)")
    ax.set_ylabel("GB/s")
    ax.set_title(f"All-reduce, {sweep.world_size} ranks on {sweep.nodes} node(s), {sweep.backend} on {sweep.device}"
                 + (" (lab: CPU run)" if _lab(ctx) else ""), fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _plot(ctx, fig, "bandwidth", "bus bandwidth against message size")


def _no_plot(ctx, what: str) -> Table:
    why = "plan mode: nothing runs" if not ctx.apply else "see the step above"
    return Table(pd.DataFrame([{"plot": f"{what} ({why})"}]), "No plot", status_col=None)


# --- 4. DDP scaling ----------------------------------------------------------------------------

def ddp() -> Table:
    """The DDP benchmark on one node and on N nodes (PyTorchJobs); throughput and scaling efficiency."""
    ctx = _ctx()
    step = "ddp | scaling"
    planned = _plan_jobs(ctx)
    keys = [k for k in planned if k.startswith("ddp-")]
    if not keys:
        rows = [skipped(ALL, step, "no layout (see the GPU inventory): nothing to run")]
    elif not ctx.apply:
        rows = [_plan_row(planned[k]) for k in keys]
    elif _kube(ctx) is None:
        rows = [failed(ALL, step, "no cluster connection (see the GPU inventory)")]
    else:
        rows = []
        runs: dict[int, DdpRun] = {}
        per_rank = []
        for k in keys:
            job = planned[k]
            run = _run_job(ctx, job)
            d = summarise_ddp(run.records)
            problems = list(d.problems) if (run.ok or run.logs) else []
            notes: list[str] = []
            _device_check(ctx, job, d.summary or (d.per_rank[0] if d.per_rank else None), d.world_size, d.nodes,
                          problems, notes)
            for n in notes:
                ctx.phase.note(n)
            if not run.ok or problems:
                msg = run.message + ("; " + "; ".join(problems) if problems else "") + _lab_logs_hint(ctx)
                rows.append(failed(job.name, step, msg, duration=run.duration))
                continue
            runs[job.scale] = d
            f = d.frame()
            f.insert(0, "job", job.name)
            per_rank.append(f)
            rows.append(StepResult(host=job.name, step=step, duration=run.duration, message=(
                f"{run.message}; {d.samples_per_s:.1f} samples/s over {d.world_size} rank(s) on {d.nodes} node(s) "
                f"({d.samples_per_s_per_rank:.1f} per rank), {d.backend} on {d.device}"),
                data={"samples_per_s": d.samples_per_s, "scale": job.scale}))
        ctx.extra["ddp"] = runs
        ctx.extra["ddp_unit"] = planned[keys[0]].scale_unit
        ctx.extra["per_rank"] = pd.concat(per_rank, ignore_index=True) if per_rank else None
    ctx.phase.record("ddp", rows, "DDP scaling")
    if ctx.apply:
        _say(rows)
    runs = ctx.extra.get("ddp") or {}
    if not runs:
        return Table(pd.DataFrame([{"job": r.host, "status": r.status, "message": r.message} for r in rows]),
                     "DDP scaling")
    unit = ctx.extra["ddp_unit"]
    frame = scaling_table(runs).rename(columns={"n": f"N ({unit})"})
    return Table(frame, f"DDP throughput against {unit} (scaling efficiency = throughput(N) / (N x throughput(1)))",
                 status_col=None)


def ranks() -> Table:
    """Every rank's figures of the DDP runs: step times, samples/s, host (a slow node stands out)."""
    ctx = _ctx()
    f = ctx.extra.get("per_rank")
    if f is None:
        return _no_plot(ctx, "no DDP run measured")
    return Table(f, "DDP per rank", status_col=None)


def scaling_plot():
    """Throughput against N with the ideal (linear) line."""
    ctx = _ctx()
    runs: dict[int, DdpRun] = ctx.extra.get("ddp") or {}
    if not runs:
        return _no_plot(ctx, "no DDP throughput measured")
    from matplotlib.figure import Figure

    unit = ctx.extra.get("ddp_unit", "nodes")
    t = scaling_table(runs)
    fig = Figure(figsize=(6.5, 4))
    ax = fig.add_subplot()
    ax.plot(t["n"], t["ideal_samples_per_s"], "--", color="grey", label="ideal (linear)")
    ax.plot(t["n"], t["samples_per_s"], "o-", label="measured")
    for n, s, e in zip(t["n"], t["samples_per_s"], t["scaling_efficiency"]):
        if e is not None and not pd.isna(e):
            ax.annotate(f"{e:.0%}", (n, s), textcoords="offset points", xytext=(6, -12), fontsize=9)
    ax.set_xticks(list(t["n"]))
    ax.margins(x=0.15)
    ax.set_ylim(bottom=0)
    ax.set_xlabel(unit)
    ax.set_ylabel("samples/s (all ranks)")
    first = next(iter(runs.values()))
    ax.set_title(f"DDP throughput, {first.backend} on {first.device}" + (" (lab: CPU run)" if _lab(ctx) else ""),
                 fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _plot(ctx, fig, "scaling", f"DDP throughput against {unit}")


# --- 5. NCCL transport -------------------------------------------------------------------------

def transport() -> Table:
    """The transport NCCL used between nodes (InfiniBand, RoCE or TCP sockets), from NCCL_DEBUG=INFO."""
    ctx = _ctx()
    step = "nccl | transport"
    runs: dict[str, JobRun] = {k: r for k, r in ctx.extra.get("runs", {}).items()
                               if r.job.kind == "PyTorchJob" and r.logs}
    rows: list[StepResult] = []
    frame_rows = []
    found: dict[str, NcclDebug] = {}
    if not runs:
        rows.append(skipped(ALL, step, "plan mode: no logs yet" if not ctx.apply else "no job logs to read"))
    for key, run in runs.items():
        d = parse_nccl_debug("\n".join(run.logs[p] for p in sorted(run.logs)))
        found[key] = d
        recs = run.records
        backend = next((r.get("backend") for r in recs if r.get("backend")), None)
        env = run.job.env()
        if d.version is None and d.transport is None:
            if backend == "gloo":
                rows.append(skipped(run.job.name, step, "no NCCL lines: the run used gloo on the CPU, NCCL was not used"))
            elif str(env.get("NCCL_DEBUG", "")).upper() not in ("INFO", "TRACE"):
                rows.append(skipped(run.job.name, step, "NCCL_DEBUG is not INFO: set validation.nccl_env "
                                                        "{NCCL_DEBUG: INFO} to see the transport"))
            else:
                rows.append(StepResult(host=run.job.name, step=step,
                                       message="NCCL_DEBUG=INFO was set but the logs hold no NCCL line"))
        else:
            msg = d.describe()
            if d.transport == "Socket" and run.job.nodes > 1:
                msg += ("; inter-node traffic goes over TCP sockets: no RDMA (check NCCL_IB_DISABLE, the HCAs and "
                        "the RDMA device plugin if the nodes have InfiniBand or RoCE)")
            if d.warnings:
                msg += f"; NCCL WARN: {'; '.join(d.warnings[:3])}"
            rows.append(StepResult(host=run.job.name, step=step, message=msg,
                                   data={"transport": d.transport, "evidence": d.evidence}))
        frame_rows.append({"job": run.job.name, "transport": d.transport, "nccl_version": d.version,
                           "ranks": d.nranks, "nodes": d.nnodes, "network": d.network,
                           "evidence": "; ".join(d.evidence), "intra_node": ", ".join(d.intra_node),
                           "gdr": d.gdr, "warnings": len(d.warnings)})
    ctx.extra["transport"] = found
    ctx.phase.record("transport", rows, "NCCL transport")
    if not frame_rows:
        return Table(pd.DataFrame([{"status": r.status, "message": r.message} for r in rows]), "NCCL transport")
    frame = pd.DataFrame(frame_rows)
    frame["message"] = [r.message for r in rows]
    return Table(frame, "NCCL transport (from NCCL_DEBUG=INFO)", status_col=None)


# --- 6. TFJob ----------------------------------------------------------------------------------

def tfjob() -> Table:
    """A TFJob running the MultiWorkerMirroredStrategy smoke test on every worker."""
    ctx = _ctx()
    step = "tfjob | smoke"
    stop = _not_possible(ctx, "tf-smoke", step)
    if stop is not None:
        return _stopped(ctx, "tfjob", stop, "TFJob smoke")
    job = _plan_jobs(ctx)["tf-smoke"]
    run = _run_job(ctx, job)
    recs = run.records
    smoke = [r for r in recs if r.get("kind") == "tf_smoke"]
    errors = [r for r in recs if r.get("kind") == "error"]
    problems = [f"{e.get('source')}: {e.get('stage')}: {e.get('message')}" for e in errors]
    if run.ok or run.logs:
        if len(smoke) != job.nodes:
            problems.append(f"{len(smoke)} tf_smoke record(s) for {job.nodes} worker(s)")
        for r in smoke:
            if not r.get("ok") or r.get("allreduce_sum") != r.get("expected_sum"):
                problems.append(f"{r.get('source')}: all-reduce sum {r.get('allreduce_sum')}, expected "
                                f"{r.get('expected_sum')}")
            elif r.get("world_size") != job.nodes and not _lab(ctx):
                problems.append(f"{r.get('source')}: {r.get('world_size')} worker(s) in sync, the job has {job.nodes}")
    if smoke and _lab(ctx) and all(str(r.get("device", "")).startswith("cpu") for r in smoke):
        ctx.phase.note("lab: the TFJob's figures come from a CPU run of TensorFlow, served as its pods' logs"
                       if cnodes.simulated(ctx.params) else "lab: the TFJob ran TensorFlow on the CPU")
    if not run.ok or problems:
        row = failed(job.name, step, run.message + ("; " + "; ".join(problems) if problems else "")
                     + _lab_logs_hint(ctx), duration=run.duration)
    else:
        r0 = smoke[0]
        row = StepResult(host=job.name, step=step, duration=run.duration, message=(
            f"{run.message}; {len(smoke)} worker(s) in sync: all-reduce sum {r0.get('allreduce_sum')} = expected, "
            f"loss {r0.get('loss_first'):.4g} -> {r0.get('loss_last'):.4g} in {r0.get('steps')} steps, "
            f"TensorFlow {r0.get('tf_version')} on {r0.get('device')}"))
    ctx.phase.record("tfjob", [row], "TFJob smoke")
    _say([row])
    if not smoke:
        return Table(pd.DataFrame([{"status": row.status, "message": row.message, "hint": row.hint}]), "TFJob smoke")
    cols = ["source", "rank", "world_size", "replicas_in_sync", "allreduce_sum", "expected_sum", "steps", "loss_first",
            "loss_last", "device", "tf_version", "ok"]
    return Table(pd.DataFrame([{c: r.get(c) for c in cols} for r in smoke], columns=cols).rename(
        columns={"source": "pod"}), f"TFJob {job.name}: MultiWorkerMirroredStrategy", status_col=None)


# --- 7. TrainJob -------------------------------------------------------------------------------

def trainjob() -> Table:
    """The Trainer v2 TrainJob variant. No Trainer CRDs on the cluster: skipped, saying so (and checked
    against the offline bundle's CRD). CRDs served: a server-side dry run; in apply mode, with the
    ``torch-distributed`` ClusterTrainingRuntime installed, it also runs and its logs are parsed."""
    ctx = _ctx()
    step = "trainjob | smoke"
    planned = _plan_jobs(ctx)
    kube = _kube(ctx)
    rows: list[StepResult] = []
    if "trainjob" not in planned:
        rows.append(skipped(ALL, step, "no layout (see the GPU inventory): nothing to build"))
    elif kube is None:
        rows.append(skipped(ALL, step, "no cluster to dry-run against"))
    else:
        job = planned["trainjob"]
        if _served(kube, job.kind, job.api_version) is None:
            crd, where = _bundle_crd(ctx, "TrainJob")
            base = ("the cluster has no Trainer v2 CRDs (trainjobs.trainer.kubeflow.org is not served): Kubeflow "
                    "Trainer is not installed, so the TrainJob variant is not run")
            if crd is None:
                rows.append(skipped(job.name, step, f"{base}; {where}"))
            else:
                problems = crd_problems(job.manifest, crd)
                rows.append(failed(job.name, step, f"{base}; the manifest does not fit the CRD of the {where}: "
                                                   + "; ".join(problems)) if problems else
                            skipped(job.name, step, f"{base}; the manifest fits the TrainJob CRD of the {where}"))
        else:
            dry = _dry_run(ctx, kube, job, _namespace_exists(kube, job.namespace))
            dry.changed = False  # a check only: the TrainJob is created below, when it runs
            rows.append(dry)
            runtime = _runtime(kube)
            if dry.ok and ctx.apply and runtime:
                rows.append(_run_trainjob(ctx, job))
            elif dry.ok:
                why = ("plan mode" if not ctx.apply else
                       f"the ClusterTrainingRuntime {TRAINER_RUNTIME} is not installed (Kubeflow Trainer's runtimes)")
                rows.append(skipped(job.name, step, f"not run: {why}; validated by the server-side dry run only"))
    ctx.phase.record("trainjob", rows, "TrainJob (Trainer v2)")
    return Table(pd.DataFrame([{"job": r.host, "status": r.status, "message": r.message} for r in rows]),
                 "TrainJob (Trainer v2)")


def _runtime(kube: Kube) -> bool:
    res = _served(kube, "ClusterTrainingRuntime", "trainer.kubeflow.org/v1alpha1")
    return res is not None and kube.get_or_none(res.path(None, TRAINER_RUNTIME)) is not None


def _run_trainjob(ctx, job: tplan.PlannedJob) -> StepResult:
    run = _run_job(ctx, job)
    d = summarise_ddp(run.records)
    problems = list(d.problems) if (run.ok or run.logs) else []
    notes: list[str] = []
    _device_check(ctx, job, d.summary, d.world_size, d.nodes, problems, notes)
    for n in notes:
        ctx.phase.note(n)
    if not run.ok or problems:
        return failed(job.name, job.step, run.message + ("; " + "; ".join(problems) if problems else ""),
                      duration=run.duration)
    return StepResult(host=job.name, step=job.step, duration=run.duration,
                      message=f"{run.message}; {d.samples_per_s:.1f} samples/s over {d.world_size} rank(s)")


# --- 8. thresholds -----------------------------------------------------------------------------

def thresholds() -> Table:
    """The measurements against ``validation.min_busbw_gbps`` and ``validation.min_scaling_efficiency``;
    a failure names the threshold and what to look at."""
    ctx = _ctx()
    v = ctx.params.validation
    host = "(thresholds)"
    rows: list[StepResult] = []
    frame = []
    lab = " (lab: figures of a CPU run on this machine, not of GPUs)" if _lab(ctx) else ""

    def add(param: str, required: float, measured, what: str, look_at: str, why_none: str) -> None:
        step = f"thresholds | validation.{param}"
        if measured is None:
            r = skipped(host, step, f"{what}: not measured ({why_none})")
            frame.append({"threshold": what, "param": f"validation.{param}", "required": f">= {required:g}",
                          "measured": None, "status": r.status, "look_at": ""})
        elif measured >= required:
            r = StepResult(host=host, step=step, message=f"{what} {measured:.3g} >= {required:g} "
                                                          f"(validation.{param}): met{lab}")
            frame.append({"threshold": what, "param": f"validation.{param}", "required": f">= {required:g}",
                          "measured": round(measured, 4), "status": "ok", "look_at": ""})
        else:
            r = failed(host, step, f"threshold validation.{param} not met: {what} {measured:.3g} < {required:g}; "
                                   f"look at {look_at}{lab}")
            frame.append({"threshold": what, "param": f"validation.{param}", "required": f">= {required:g}",
                          "measured": round(measured, 4), "status": "FAILED", "look_at": look_at})
        rows.append(r)

    sweep: Sweep | None = ctx.extra.get("sweep")
    bw = sweep.max_busbw_gbps if sweep is not None and sweep.ok else None
    why_bw = "plan mode" if not ctx.apply else "the sweep did not give results (see its step)"
    if sweep is not None and sweep.ok and (sweep.world_size or 0) < 2:
        bw, why_bw = None, "one rank: there is no bus to measure"
    add("min_busbw_gbps", v.min_busbw_gbps, bw, "peak all-reduce bus bandwidth (GB/s)", BUSBW_LOOK_AT, why_bw)

    runs: dict[int, DdpRun] = ctx.extra.get("ddp") or {}
    eff = None
    why_eff = "plan mode" if not ctx.apply else "the DDP runs did not give results (see their step)"
    if len(runs) >= 2:
        t = scaling_table(runs)
        last = t.iloc[-1]
        eff = float(last["scaling_efficiency"]) if not pd.isna(last["scaling_efficiency"]) else None
        what = f"scaling efficiency at {int(last['n'])} {ctx.extra.get('ddp_unit', 'nodes')}"
    else:
        what = "scaling efficiency"
        if ctx.apply and len([k for k in _plan_jobs(ctx) if k.startswith("ddp-")]) == 1:
            why_eff = "one node with one GPU: nothing to scale across"
    add("min_scaling_efficiency", v.min_scaling_efficiency, eff, what, SCALING_LOOK_AT, why_eff)
    ctx.phase.record("thresholds", rows, "Thresholds")
    return Table(pd.DataFrame(frame), "Thresholds", status_col="status")


# --- 9. cleanup --------------------------------------------------------------------------------

def cleanup() -> Table:
    """Delete the jobs this run submitted (their pods go with them) and the workloads ConfigMap,
    unless ``validation.keep_jobs``. The namespace stays (empty)."""
    ctx = _ctx()
    step = "jobs | cleanup"
    kube = _kube(ctx)
    submitted: list[tplan.PlannedJob] = ctx.extra.get("submitted", [])
    sel = f"{LABEL_RUN}={ctx.extra['run_id']}"
    rows: list[StepResult] = []
    if not ctx.apply:
        rows.append(skipped(ALL, step, "plan mode: nothing submitted" + (
            "" if ctx.params.validation.keep_jobs else "; apply mode deletes the jobs once their logs are read")))
    elif kube is None:
        rows.append(skipped(ALL, step, "no cluster connection"))
    elif ctx.params.validation.keep_jobs:
        rows += [skipped(j.name, step, f"kept (validation.keep_jobs): kubectl -n {j.namespace} delete "
                                       f"{j.kind.lower()}s {j.name}") for j in submitted]
        rows.append(skipped(tplan.CONFIGMAP, step, f"kept (validation.keep_jobs); this run's objects: -l {sel}"))
    else:
        targets = [(j.kind, j.api_version, j.name) for j in submitted] + [("ConfigMap", "v1", tplan.CONFIGMAP)]
        for kind, api, name in targets:
            t0 = time.monotonic()
            try:
                res = kube.resource(kind, api)
                gone = kube.delete(res, name, tplan.NAMESPACE, propagation="Background") is None
                if kind != "ConfigMap":
                    wait_for(kube, kind, name, tplan.NAMESPACE, condition="Deleted", timeout=120, api_version=api,
                             progress=False)
                rows.append(StepResult(host=name, step=step, changed=not gone, duration=time.monotonic() - t0,
                                       message=f"{kind} {name}: " + ("already gone" if gone else "deleted")))
            except (KubeError, WaitTimeout, NoKindMatch) as e:
                rows.append(failed(name, step, f"{kind} {name} not deleted: {e}", duration=time.monotonic() - t0))
        ctx.extra["submitted"] = []
    ctx.phase.record("cleanup", rows, "Cleanup")
    return Table(pd.DataFrame([{"object": r.host, "status": r.status, "message": r.message} for r in rows]),
                 "Cleanup")


# --- verdict -----------------------------------------------------------------------------------

def finish() -> None:
    """Close the phase: writes the verdict JSON and fails the notebook when a step or threshold failed."""
    ctx = _ctx()
    if ctx.apply and ctx.extra.get("submitted") and not ctx.params.validation.keep_jobs and "cleanup" not in ctx.phase.steps:
        cleanup()
    kube = ctx.extra.get("kube")
    if kube is not None:
        kube.close()
        ctx.extra.pop("kube", None)
    common.finish(NUMBER)
