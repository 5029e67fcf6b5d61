"""Phase 90, troubleshoot: find what keeps the cluster from working, explain it, name the fix.

Steps (one notebook cell each): cluster and nodes (NotReady nodes), namespaces stuck in
Terminating, finalizing them, stale admission webhooks, removing them, image pull failures,
Pending GPU pods, verdict.

Finders only read. The two fixers change the cluster only with ``mode: apply`` *and*
``confirm: yes``; otherwise they report what they would do and change nothing:

- a stuck namespace: remove the finalizers of the objects left in it (their controller is gone,
  so nobody else will; deleting them rather than orphaning them in etcd, where they would come
  back with a namespace of the same name), then PUT its ``finalize`` subresource with
  ``spec.finalizers`` emptied, which also frees a namespace the namespace controller cannot finish
  because an aggregated API is unavailable;
- a stale webhook: delete its configuration (or only the stale entries when others in it are
  healthy), guarded by the resourceVersion it was found with.

Findings are not failures: the verdict is ok when every finding is explained and has a fix.
A step fails only when it cannot look (API unreachable) or a confirmed fix fails.
"""

from __future__ import annotations

import time
from dataclasses import asdict

import pandas as pd

from ..kube import diagnose as dg
from ..kube.client import KubeError
from ..kube.tables import node_rows
from ..report import StepResult, Table, failed, skipped
from . import common

NUMBER = "90"
NAME = "troubleshoot"

_FINDING_COLUMNS = ["finding", "object", "problem", "blockers", "fix", "status"]


def setup(params_file: str = "", mode: str = "plan", confirm: bool = False, run_dir: str = "") -> Table:
    """Load the params, connect to the cluster (kubeconfig from the params), start the phase."""
    ctx = common.setup(NUMBER, NAME, params_file, mode, run_dir, confirm)
    ctx.extra["findings"] = {}
    # The site's kubeconfig: kubernetes.existing_kubeconfig, else the one 30_kubernetes fetched.
    kube = common.kube(ctx)
    cluster = f"{kube.name} ({kube.host})" if kube is not None else f"none: {ctx.extra.get('kube_error')}"
    head = common.header_table(ctx)
    rows = [{"setting": "cluster", "value": cluster},
            {"setting": "confirm", "value": "yes: fixes are applied" if _acting(ctx)
             else ("yes, but mode is plan: nothing is changed" if ctx.confirm else "no: report only, nothing is changed")}]
    return Table(pd.concat([head.frame, pd.DataFrame(rows)], ignore_index=True), head.title, status_col=None)


def _ctx():
    return common.context(NUMBER)


def _acting(ctx) -> bool:
    return ctx.apply and ctx.confirm


def _host(ctx) -> str:
    kube = ctx.extra.get("kube")
    return kube.name if kube is not None else "cluster"


def _no_cluster(step: str) -> Table | None:
    """When there is no kubeconfig: skipped in plan mode (nothing to look at yet), failed in apply
    mode (asked to fix a cluster it cannot reach). None when there is a cluster."""
    ctx = _ctx()
    if common.kube(ctx) is not None:
        return None
    why = ctx.extra.get("kube_error", "no kubeconfig")
    r = failed(_host(ctx), step, f"no cluster to look at: {why}") if ctx.apply else skipped(
        _host(ctx), step, f"no cluster (kubeconfig): {why}")
    ctx.extra["findings"][step] = []
    return ctx.phase.record(step, [r], step)


def _findings_table(findings: list[dg.Finding], title: str, status: dict[str, str] | None = None) -> Table:
    rows = [{"finding": f.kind, "object": f.object, "problem": f.problem, "blockers": "; ".join(f.blockers),
             "fix": f.fix, "status": (status or {}).get(f.object, "found")} for f in findings]
    if not rows:
        rows = [{"finding": "-", "object": "-", "problem": "none found", "blockers": "", "fix": "", "status": "ok"}]
    return Table(pd.DataFrame(rows, columns=_FINDING_COLUMNS), title, status_col=None)


def _record_findings(step: str, findings: list[dg.Finding]) -> None:
    ctx = _ctx()
    ctx.extra["findings"][step] = findings
    host = _host(ctx)
    if not findings:
        results = [StepResult(host=host, step=step, message="none found")]
    else:
        results = [StepResult(host=host, step=step, message=f"{f.object}: {f.problem}. Fix: {f.fix}",
                              data=_plain(f)) for f in findings]
    ctx.phase.record(step, results)


def _plain(f: dg.Finding) -> dict:
    d = asdict(f)
    d["data"] = {k: v for k, v in f.data.items() if k != "remaining"}
    if "remaining" in f.data:
        d["data"]["remaining"] = [{k: v for k, v in o.items() if k != "resource"} for o in f.data["remaining"]]
    return d


def _unreachable(step: str, e: Exception) -> Table:
    ctx = _ctx()
    r = failed(_host(ctx), step, f"cannot read the cluster: {e}")
    return ctx.phase.record(step, [r], step)


# -- steps ------------------------------------------------------------------------------------
STEP_NODES = "nodes | NotReady"
STEP_NS = "namespaces | stuck in Terminating"
STEP_NS_FIX = "namespaces | finalize"
STEP_WH = "webhooks | without a backend"
STEP_WH_FIX = "webhooks | remove"
STEP_IMG = "pods | image pull failures"
STEP_GPU = "pods | Pending GPU pods"


def nodes() -> Table:
    """Every node with its Ready status and GPUs; NotReady nodes become findings."""
    if (t := _no_cluster(STEP_NODES)) is not None:
        return t
    ctx = _ctx()
    kube = ctx.extra["kube"]
    try:
        items = kube.list(kube.resource("Node", "v1"))
    except KubeError as e:
        return _unreachable(STEP_NODES, e)
    findings = dg.not_ready_findings(items)
    _record_findings(STEP_NODES, findings)
    rows = node_rows(sorted(items, key=lambda n: n["metadata"]["name"]))
    fixes = {f.object.split(" ", 1)[1]: f.fix for f in findings}
    for r in rows:
        r["fix"] = fixes.get(r["name"], "")
    frame = pd.DataFrame(rows, columns=["name", "status", "roles", "gpu_allocatable", "gpu_capacity", "version",
                                        "ready_reason", "ready_message", "fix"])
    n_bad = len(findings)
    return Table(frame, f"Nodes: {len(rows)} ({n_bad} NotReady)", status_col=None)


def terminating_namespaces() -> Table:
    """Namespaces stuck in Terminating, with what blocks each and the fix."""
    if (t := _no_cluster(STEP_NS)) is not None:
        return t
    ctx = _ctx()
    try:
        findings = dg.terminating_namespaces(ctx.extra["kube"])
    except KubeError as e:
        return _unreachable(STEP_NS, e)
    _record_findings(STEP_NS, findings)
    return _findings_table(findings, f"Namespaces stuck in Terminating: {len(findings)}")


def finalize_namespaces() -> Table:
    """Finalize the stuck namespaces found above: only with mode apply and confirm yes."""
    if (t := _no_cluster(STEP_NS_FIX)) is not None:
        return t
    ctx = _ctx()
    findings = ctx.extra["findings"].get(STEP_NS)
    if findings is None:
        raise common.SetupFirst("run the 'Namespaces stuck in Terminating' cell first")
    kube, host = ctx.extra["kube"], _host(ctx)
    results: list[StepResult] = []
    status: dict[str, str] = {}
    for f in findings:
        name = f.data["namespace"]
        if not _acting(ctx):
            results.append(skipped(host, STEP_NS_FIX, _why_not(ctx) + f": would finalize namespace {name} ("
                                   + dg.NS_FINALIZE_EXPLAINED + ")"))
            status[f.object] = "not changed"
            continue
        t0 = time.monotonic()
        try:
            done = dg.finalize_namespace(kube, name)
        except KubeError as e:
            results.append(failed(host, STEP_NS_FIX, f"namespace {name}: finalize failed: {e}"))
            status[f.object] = "FAILED"
            continue
        gone = done and done[-1].endswith("is gone")
        results.append(StepResult(host=host, step=STEP_NS_FIX, ok=bool(gone), changed=True,
                                  message=f"namespace {name}: " + "; ".join(done), duration=time.monotonic() - t0))
        status[f.object] = "finalized" if gone else "still there"
    if not findings:
        results.append(StepResult(host=host, step=STEP_NS_FIX, message="nothing to finalize"))
    ctx.phase.record(STEP_NS_FIX, results)
    return _action_table(results, "Finalize stuck namespaces")


def stale_webhooks() -> Table:
    """Validating and mutating webhooks whose service is missing or has no ready endpoints."""
    if (t := _no_cluster(STEP_WH)) is not None:
        return t
    ctx = _ctx()
    try:
        findings = dg.stale_webhooks(ctx.extra["kube"])
    except KubeError as e:
        return _unreachable(STEP_WH, e)
    _record_findings(STEP_WH, findings)
    return _findings_table(findings, f"Admission webhooks without a backend: {len(findings)}")


def remove_stale_webhooks() -> Table:
    """Delete the stale webhooks found above: only with mode apply and confirm yes."""
    if (t := _no_cluster(STEP_WH_FIX)) is not None:
        return t
    ctx = _ctx()
    findings = ctx.extra["findings"].get(STEP_WH)
    if findings is None:
        raise common.SetupFirst("run the 'Stale admission webhooks' cell first")
    kube, host = ctx.extra["kube"], _host(ctx)
    results: list[StepResult] = []
    for f in findings:
        what = ("delete " + f.object) if f.data["all_stale"] else (
            f"remove {', '.join(f.data['stale'])} from {f.object}")
        if not _acting(ctx):
            results.append(skipped(host, STEP_WH_FIX, f"{_why_not(ctx)}: would {what}"))
            continue
        t0 = time.monotonic()
        try:
            msg = dg.remove_webhooks(kube, f)
        except KubeError as e:
            results.append(failed(host, STEP_WH_FIX, f"{f.object}: {e}"))
            continue
        results.append(StepResult(host=host, step=STEP_WH_FIX, changed=True, message=msg,
                                  duration=time.monotonic() - t0))
    if not findings:
        results.append(StepResult(host=host, step=STEP_WH_FIX, message="nothing to remove"))
    ctx.phase.record(STEP_WH_FIX, results)
    return _action_table(results, "Remove stale webhooks")


def image_pull_failures() -> Table:
    """Pods waiting on an image pull (ImagePullBackOff, ErrImagePull...) with their images."""
    if (t := _no_cluster(STEP_IMG)) is not None:
        return t
    ctx = _ctx()
    kube = ctx.extra["kube"]
    try:
        pods = kube.list(kube.resource("Pod", "v1"))
    except KubeError as e:
        return _unreachable(STEP_IMG, e)
    findings = dg.image_pull_findings(pods)
    _record_findings(STEP_IMG, findings)
    return _findings_table(findings, f"Image pull failures: {len(findings)}")


def pending_gpu_pods() -> Table:
    """Pending pods that ask for nvidia.com/gpu, with the scheduler's reason and the fix."""
    if (t := _no_cluster(STEP_GPU)) is not None:
        return t
    ctx = _ctx()
    kube = ctx.extra["kube"]
    try:
        pods = kube.list(kube.resource("Pod", "v1"), field_selector="status.phase=Pending")
        nodes_ = kube.list(kube.resource("Node", "v1"))
        events = kube.list(kube.resource("Event", "v1"), field_selector="reason=FailedScheduling")
    except KubeError as e:
        return _unreachable(STEP_GPU, e)
    gpus = sum(int((n.get("status") or {}).get("allocatable", {}).get(dg.GPU, 0) or 0) for n in nodes_)
    findings = dg.pending_gpu_findings(pods, events, cluster_gpus=gpus)
    _record_findings(STEP_GPU, findings)
    return _findings_table(findings, f"Pending GPU pods: {len(findings)} (cluster allocatable {dg.GPU}: {gpus})")


def finish() -> Table:
    """Write the verdict: ok when every check could run and every confirmed fix worked."""
    ctx = _ctx()
    found = sum(len(v) for v in ctx.extra.get("findings", {}).values())
    if ctx.extra.get("kube") is None:
        ctx.phase.note(f"nothing was checked: no cluster ({ctx.extra.get('kube_error', 'no kubeconfig')})")
        return common.finish(NUMBER)
    ctx.phase.note(f"{found} finding(s); each names its fix" if found else "nothing found")
    if found and not _acting(ctx):
        ctx.phase.note("report only: rerun with mode: apply and confirm: yes to finalize namespaces "
                       "and remove stale webhooks")
    return common.finish(NUMBER)


def _why_not(ctx) -> str:
    if not ctx.confirm:
        return "not confirmed (confirm: yes needed)"
    return "mode is plan (mode: apply needed)"


def _action_table(results: list[StepResult], title: str) -> Table:
    rows = [{"status": r.status, "changed": r.changed, "message": r.message} for r in results]
    return Table(pd.DataFrame(rows, columns=["status", "changed", "message"]), title)
