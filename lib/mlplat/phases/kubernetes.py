"""Phase 30, kubernetes: a kubeadm cluster with GPU scheduling, or an existing cluster made ready.

Steps (one notebook cell each):

1. ``packages``: the per-minor pkgs.k8s.io repository (or ``mirrors.kubernetes``) and pinned,
   held kubelet/kubeadm/kubectl on every host;
2. ``config``: the kubeadm config (v1beta4 for 1.31+, v1beta3 before) rendered from the params,
   validated (and checked by the real ``kubeadm config validate`` when a kubeadm binary is at hand);
3. ``init``: ``kubeadm init`` on the first control plane, or the cluster found there reused;
4. ``join``: a fresh token (``kubeadm token create --print-join-command``, parsed), every other
   host joined, the token deleted;
5. ``kubeconfig``: the admin kubeconfig fetched to ``~/.kube/mlplat-<site>.conf`` and the API
   server's answer checked;
6. ``cni``: flannel from the offline bundle, its network set to ``kubernetes.pod_cidr``;
7. ``device_plugin``: NVIDIA's device plugin DaemonSet from the offline bundle;
8. ``labels``: node labels (worker role, ``nvidia.com/gpu.present``, GPU model);
9. ``verify``: every node Ready and its ``nvidia.com/gpu`` allocatable equal to the expectation;
10. ``smoke``: a Job asking for one GPU on each GPU node.

With ``kubernetes.existing_kubeconfig`` (how the phase runs on the lab) steps 1-5 are skipped with
the reason and the rest run against that cluster. On the lab's KWOK nodes the GPU counts are
simulated (``lab.simulated_gpus``) and the smoke Job proves scheduling only; the tables say so.
"""

from __future__ import annotations

import os
import shutil
import time

import pandas as pd
import yaml

from ..cluster import bundle, kubeadm, kubeconfig as kc, nodes, packages as pk
from ..cluster.remote import run_steps
from ..cluster.steps import apply_rows, planned_rows, wait_rows
from ..hosts import HostPool
from ..kube import Kube, KubeError, WaitFailed, WaitTimeout, apply, wait_for
from ..params.schema import ROLE_CONTROL_PLANE
from ..params.versions import minor
from ..report import StepResult, Table, failed, register_secret, skipped
from . import common

NUMBER, NAME = "30", "kubernetes"
KUBEADM_ENV = "MLPLAT_KUBEADM"
ALL = "(cluster)"


def setup(params_file: str = "", mode: str = "plan", run_dir: str = "", confirm: bool = False,
          kubeadm_extra: str = "") -> Table:
    """Load and validate the params; show what this run uses and how the cluster comes to be."""
    ctx = common.setup(NUMBER, NAME, params_file, mode, run_dir, confirm)
    ctx.extra["kubeadm_extra"] = kubeadm_extra
    table = common.header_table(ctx)
    p = ctx.params
    rows = [{"setting": "cluster", "value": (
        f"existing (kubernetes.existing_kubeconfig: {p.kubernetes.existing_kubeconfig}); kubeadm not used"
        if kc.existing(p) else f"kubeadm {p.versions.kubernetes} on {kubeadm.first_control_plane(p).name}, "
                               f"kubeconfig to {kc.site_kubeconfig(p)}")},
            {"setting": "GPUs expected", "value": "; ".join(
                f"{n}: {e.gpus}" for n, e in nodes.expected_gpus(p).items())},
            {"setting": "CNI", "value": p.kubernetes.cni}]
    table.frame = pd.concat([table.frame, pd.DataFrame(rows)], ignore_index=True)
    return table


def _ctx():
    return common.context(NUMBER)


def _pool(ctx) -> HostPool:
    if ctx.extra.get("pool") is None:
        ctx.extra["pool"] = HostPool(ctx.params, base_dir=ctx.params_path.parent)
    return ctx.extra["pool"]


def _kube(ctx) -> Kube | None:
    """The cluster connection, or None while there is no kubeconfig (reason in extra["kube_error"])."""
    return common.kube(ctx)


def _existing_skip(ctx, step: str) -> list[StepResult] | None:
    if kc.existing(ctx.params):
        return [skipped(ALL, step, "existing cluster (kubernetes.existing_kubeconfig): kubeadm is not run, "
                                   "the cluster's nodes are used as they are")]
    return None


# ---------------------------------------------------------------------------------------------

def packages() -> Table:
    """Kubernetes package repository and pinned kubelet, kubeadm, kubectl on every host."""
    ctx = _ctx()
    step = "packages | kubeadm kubelet kubectl"
    rows = _existing_skip(ctx, step)
    if rows is None:
        steps = [pk.install_step(ctx.params, h) for h in ctx.params.hosts]
        rows = run_steps(_pool(ctx), steps, ctx.apply, step)
        for r in rows:
            if r.ok and "probe" in r.data and not r.message.startswith("unchanged"):
                miss = pk.missing(ctx.params, pk.parse_probe(r.data["probe"]))
                if miss:
                    r.message = f"{'needed' if ctx.apply else 'needs'} {', '.join(miss)}; " + r.message
    return ctx.phase.record("packages", rows, "Kubernetes packages")


def _kubeadm_binary() -> str | None:
    """A local kubeadm for `kubeadm config validate`: $MLPLAT_KUBEADM, else kubeadm on PATH."""
    cand = os.environ.get(KUBEADM_ENV) or shutil.which("kubeadm")
    return cand if cand and os.path.exists(cand) else None


def render(ctx) -> tuple[list[dict], list[kubeadm.ConfigProblem]]:
    """The init config documents (with the extra file merged) and every problem found."""
    p = ctx.params
    docs = kubeadm.render_init(p)
    extra = ctx.extra.get("kubeadm_extra")
    if extra:
        try:
            docs = kubeadm.merge_extra(docs, kubeadm.load_extra(extra))
        except (OSError, ValueError, yaml.YAMLError) as e:  # missing file, or not YAML
            return docs, [kubeadm.ConfigProblem("kubeadm_extra", str(e), "point kubeadm_extra at a readable YAML file")]
    problems = kubeadm.validate_config(docs, p.versions.kubernetes, p.hosts)
    return docs, problems


def config() -> Table:
    """Render and validate the kubeadm config; show it. Refused configs stop the phase here."""
    ctx = _ctx()
    step = "kubeadm | config"
    p = ctx.params
    t0 = time.monotonic()
    docs, problems = render(ctx)
    text = kubeadm.dump_docs(docs)
    ctx.extra["init_config"] = text
    errs = kubeadm.errors(problems)
    rows: list[StepResult] = []
    for pr in problems:
        rows.append(failed("(params)", step, str(pr)) if pr.severity == "error"
                    else StepResult(host="(params)", step=step, message=f"warning: {pr}"))
    if not errs:
        av = docs[0].get("apiVersion")
        msg = (f"{av}: Kubernetes {p.versions.kubernetes}, endpoint {kubeadm.control_plane_endpoint(p)}, pods "
               f"{p.kubernetes.pod_cidr}, services {p.kubernetes.service_cidr}, cgroup driver "
               f"{p.kubernetes.cgroup_driver}, sandbox image {kubeadm.sandbox_image(p)} (containerd must use it)")
        rows.append(StepResult(host="(params)", step=step, message=msg, diff=text, data={"config": text}))
        kb = _kubeadm_binary()
        if kb:
            ok, out = kubeadm.kubeadm_validate(text, kb)
            ver = kubeadm.kubeadm_version(kb)
            if ok:
                rows.append(StepResult(host="(local)", step=step, message=f"kubeadm {ver} config validate: {out or 'ok'}"))
            else:
                rows.append(failed("(local)", step, f"kubeadm {ver} config validate refused it: {out}"))
        else:
            rows.append(StepResult(host="(local)", step=step, message="no local kubeadm ($MLPLAT_KUBEADM or PATH): "
                                   "the first control plane runs kubeadm config validate before init"))
    if kc.existing(p):
        for r in rows:
            if r.ok:
                r.skipped = True
                r.message = "skipped: existing cluster, config not used; " + r.message
    for r in rows:
        r.duration = time.monotonic() - t0
    ctx.phase.record("config", rows, "kubeadm config")
    ctx.extra["config_ok"] = not errs
    if not errs and not kc.existing(p):
        print(f"# {kubeadm.INIT_CONFIG} as rendered (join configs follow the same API version)\n{text}")
    return Table(pd.DataFrame([{"status": r.status, "host": r.host, "message": r.message} for r in rows]),
                 "kubeadm config")


def config_text() -> str:
    """The rendered kubeadm init config, for reading in the notebook."""
    return _ctx().extra.get("init_config") or kubeadm.dump_docs(render(_ctx())[0])


def init() -> Table:
    """`kubeadm init` on the first control plane (reused when it already runs a cluster)."""
    ctx = _ctx()
    step = "kubeadm | init"
    rows = _existing_skip(ctx, step)
    if rows is None:
        if "config_ok" not in ctx.extra:
            config()
        if not ctx.extra.get("config_ok"):
            rows = [skipped(ALL, step, "not run: the kubeadm config was refused (see the config table)")]
        else:
            rows = run_steps(_pool(ctx), kubeadm.init_plan(ctx.params, ctx.extra["init_config"]), ctx.apply, step)
            for r in rows:
                if r.ok and r.message.startswith("unchanged"):
                    _check_reused(ctx, r)
    return ctx.phase.record("init", rows, "kubeadm init")


def _check_reused(ctx, r: StepResult) -> None:
    """A control plane already runs: reuse it only if it is the cluster the params describe."""
    got = _pool(ctx).connection(r.host).sudo(kubeadm.EXISTING_CONFIG_COMMAND, timeout=60)
    if not got.ok:
        r.message += f"; could not read its kubeadm-config ({got.summary()})"
        return
    diffs = kubeadm.compare_existing(got.stdout, ctx.params)
    if diffs:
        r.ok = False
        r.message = ("a cluster already runs here but differs from the params: " + "; ".join(diffs)
                     + ". Fix the params to match it, or run 99_teardown (kubeadm reset) to start over")
    else:
        r.message = "reused: a cluster already runs here, with the params' version and networks"


def join() -> Table:
    """A fresh token, then `kubeadm join` on every other host; the token is deleted afterwards."""
    ctx = _ctx()
    step = "kubeadm | join"
    p = ctx.params
    rows = _existing_skip(ctx, step)
    if rows is None and not kubeadm.joining_hosts(p):
        rows = [skipped(ALL, step, "a single-host cluster: nothing to join")]
    if rows is None:
        pool = _pool(ctx)
        if not ctx.apply:
            rows = run_steps(pool, kubeadm.join_plan(p), False, step)
        else:
            # Only hosts that are not in a cluster yet need a token.
            probe = run_steps(pool, kubeadm.join_plan(p), False, step)
            todo = [r.host for r in probe if r.ok and not r.message.startswith("unchanged")]
            rows = [r for r in probe if not r.ok or r.message.startswith("unchanged")]
            if todo:
                captured: dict = {}
                rows += run_steps(pool, kubeadm.token_step(p), True, "kubeadm | token", captured)
                if "join" in captured:
                    try:
                        info = kubeadm.parse_join_command(captured["join"])
                    except kubeadm.JoinParseError as e:
                        rows.append(failed(kubeadm.first_control_plane(p).name, step, str(e)))
                        info = None
                    if info:
                        register_secret(info.token)
                        key = kubeadm.parse_certificate_key(captured["certificate_key"]) \
                            if "certificate_key" in captured else None
                        if key:
                            register_secret(key)
                        plan = [s for s in kubeadm.join_plan(p, info, key) if s.host in todo]
                        # Control planes join one at a time (each adds an etcd member; kubeadm's
                        # docs join them sequentially), then the workers all at once.
                        cps = [s for s in plan if ROLE_CONTROL_PLANE in p.host(s.host).roles]
                        for s_ in cps:
                            rows += run_steps(pool, [s_], True, step)
                        rows += run_steps(pool, [s_ for s_ in plan if s_ not in cps], True, step)
                        rows += run_steps(pool, kubeadm.token_cleanup(p, info), True, "kubeadm | token")
    return ctx.phase.record("join", rows, "kubeadm join")


def kubeconfig() -> Table:
    """Fetch the admin kubeconfig (kubeadm) and check that the API server answers."""
    ctx = _ctx()
    step = "kubeconfig | fetch"
    p = ctx.params
    rows: list[StepResult] = []
    if not kc.existing(p):
        if ctx.apply:
            captured: dict = {}
            rows += run_steps(_pool(ctx), kubeadm.kubeconfig_step(p), True, step, captured)
            if "kubeconfig" in captured and captured["kubeconfig"].strip():
                path, changed = kc.write(p, captured["kubeconfig"])
                rows = [r for r in rows if not r.ok] + [StepResult(
                    host="(local)", step=step, changed=changed,
                    message=f"{'wrote' if changed else 'unchanged'} {path} (0600, holds credentials)")]
                ctx.extra.pop("kube", None)
        else:
            rows.append(StepResult(host="(local)", step=step, changed=not kc.site_kubeconfig(p).exists(),
                                   message=f"would copy {kubeadm.ADMIN_CONF} from "
                                           f"{kubeadm.first_control_plane(p).name} to {kc.site_kubeconfig(p)}"))
    kube = _kube(ctx)
    if kube is None:
        rows.append(skipped("(local)", "cluster | connect", "no cluster yet (plan mode before kubeadm init)"))
    else:
        try:
            v = kube.version()
            rows.append(StepResult(host=kube.name, step="cluster | connect",
                                   message=f"API server {kube.host} answers: Kubernetes {v.get('gitVersion')}",
                                   data={"version": v.get("gitVersion")}))
            got, want = minor(v.get("gitVersion", "0.0")), minor(p.versions.kubernetes)
            if got != want:
                rows.append(failed(kube.name, "cluster | connect",
                                   f"the cluster runs {v.get('gitVersion')}, the params pin {p.versions.kubernetes}: "
                                   "set versions.kubernetes to what runs (add-ons and Istio are checked against it)"))
        except KubeError as e:
            rows.append(failed(kube.name, "cluster | connect", f"API server {kube.host} does not answer: {e}"))
    return ctx.phase.record("kubeconfig", rows, "Cluster access")


def _apply_or_plan(ctx, objs: list[dict], step: str, workloads: list[tuple[str, str, str]]) -> list[StepResult]:
    kube = _kube(ctx)
    if kube is None:
        return planned_rows(objs, step, ALL, "no cluster yet: not dry-run checked")
    rows = apply_rows(kube, objs, step, dry_run=not ctx.apply)
    if ctx.apply and all(r.ok for r in rows):
        rows += wait_rows(kube, workloads, step.split(" | ")[0] + " | rollout", timeout=_timeout(ctx),
                          suffix=" (KWOK pods: nothing runs in them)" if nodes.simulated(ctx.params) else "")
    return rows


def _timeout(ctx) -> float:
    return 120.0 if nodes.simulated(ctx.params) else 600.0


def cni() -> Table:
    """flannel from the offline bundle, with its network set to the pod CIDR."""
    ctx = _ctx()
    step = "cni | flannel"
    if ctx.params.kubernetes.cni == "none":
        rows = [skipped(ALL, step, "kubernetes.cni is none: bring your own CNI")]
    else:
        try:
            objs = bundle.flannel(ctx.params)
        except bundle.BundleMissing as e:
            rows = [failed(ALL, step, str(e))]
        else:
            ds = [("DaemonSet", o["metadata"].get("namespace", ""), o["metadata"]["name"])
                  for o in objs if o["kind"] == "DaemonSet"]
            rows = _apply_or_plan(ctx, objs, step, ds)
    return ctx.phase.record("cni", rows, f"flannel {ctx.params.versions.flannel} (pods {ctx.params.kubernetes.pod_cidr})")


def device_plugin() -> Table:
    """NVIDIA device plugin DaemonSet from the offline bundle."""
    ctx = _ctx()
    step = "gpu | device plugin"
    try:
        objs = bundle.device_plugin(ctx.params)
    except bundle.BundleMissing as e:
        rows = [failed(ALL, step, str(e))]
    else:
        ds = [("DaemonSet", o["metadata"].get("namespace", ""), o["metadata"]["name"])
              for o in objs if o["kind"] == "DaemonSet"]
        rows = _apply_or_plan(ctx, objs, step, ds)
        if nodes.simulated(ctx.params):
            ctx.phase.note("lab: the device plugin's pods are KWOK pods (nothing runs); nvidia.com/gpu on the lab "
                           "nodes is simulated by KWOK (lab.simulated_gpus), not advertised by the plugin")
    return ctx.phase.record("device_plugin", rows, f"NVIDIA device plugin {ctx.params.versions.device_plugin}")


def labels() -> Table:
    """Node labels mlplat owns: worker role, nvidia.com/gpu.present, GPU model."""
    ctx = _ctx()
    step = "nodes | labels"
    objs = nodes.label_objects(ctx.params)
    kube = _kube(ctx)
    if kube is None:
        rows = planned_rows(objs, step, ALL, "no cluster yet")
    else:
        # Apply only to nodes that exist: an apply to a missing Node would create a bogus one.
        present = {n["metadata"]["name"] for n in kube.list(kube.resource("Node", "v1"))}
        rows = [failed(o["metadata"]["name"], step, f"node {o['metadata']['name']} is not in the cluster "
                                                    "(did kubeadm join run on it?)") if ctx.apply else
                skipped(o["metadata"]["name"], step, "not in the cluster yet: labelled once it joined (apply mode)")
                for o in objs if o["metadata"]["name"] not in present]
        there = [o for o in objs if o["metadata"]["name"] in present]
        applied = apply_rows(kube, there, step, dry_run=not ctx.apply)
        for r, o in zip(applied, there):
            r.host = o["metadata"]["name"]
            if r.ok:
                r.message += " (" + (", ".join(f"{k}={v}" for k, v in o["metadata"]["labels"].items())
                                     or "no labels") + ")"
        rows = applied + rows
    return ctx.phase.record("labels", rows, "Node labels")


def verify() -> Table:
    """Every node Ready; nvidia.com/gpu allocatable equal to the expectation (said per node)."""
    ctx = _ctx()
    step = "verify | nodes and GPUs"
    kube = _kube(ctx)
    if kube is None:
        rows = [skipped(ALL, step, "no cluster yet (plan mode before kubeadm init)")]
    else:
        # Right after join, flannel and the device plugin, nodes take a while to turn Ready and to
        # advertise their GPUs: in apply mode on real nodes, look again until all match or time runs out.
        wait = ctx.apply and not nodes.simulated(ctx.params)
        deadline = time.monotonic() + (_timeout(ctx) if wait else 0)
        t0 = time.monotonic()
        while True:
            try:
                node_list = kube.list(kube.resource("Node", "v1"))
                rows = nodes.verify_nodes(node_list, ctx.params, step)
            except KubeError as e:
                rows = [failed(kube.name, step, f"cannot list nodes: {e}")]
            if all(r.ok for r in rows) or time.monotonic() >= deadline:
                break
            time.sleep(5)
        if wait:
            for r in rows:
                r.duration = time.monotonic() - t0
                if not r.ok:
                    r.message += f" (still so after {_timeout(ctx):g} s)"
        pending = [k for k in ("init", "join", "cni", "device_plugin", "labels")
                   if any(r.changed for r in ctx.phase.steps.get(k, []))]
        if not ctx.apply and pending:
            # A plan that changes the cluster first cannot judge the end state now: say what is
            # off today without failing the plan.
            for r in rows:
                if not r.ok:
                    r.ok, r.skipped = True, True
                    r.message = (f"not yet: {r.message} (this plan changes {', '.join(pending)} first; "
                                 "apply mode judges it)")
    if nodes.simulated(ctx.params):
        ctx.phase.note(f"lab: nvidia.com/gpu is simulated by KWOK ({ctx.params.lab.simulated_gpus} per node, "
                       "lab.simulated_gpus); this checks the count the scheduler sees, not real GPUs")
    ctx.phase.record("verify", rows, "Nodes and GPUs")
    return _nodes_table(rows)


def _nodes_table(rows: list[StepResult]) -> Table:
    frame = pd.DataFrame([{"node": r.host, "status": r.status, "ready": r.data.get("ready"),
                           "gpu_allocatable": r.data.get("gpu_allocatable"), "gpu_expected": r.data.get("gpu_expected"),
                           "message": r.message} for r in rows])
    return Table(frame, "Nodes and GPUs")


def smoke() -> Table:
    """A Job asking for one GPU on each GPU node; deleted when done. Changes nothing that stays."""
    ctx = _ctx()
    step = "verify | GPU smoke job"
    p = ctx.params
    exp = nodes.expected_gpus(p)
    gpu_nodes = [n for n, e in exp.items() if e.gpus > 0]
    kube = _kube(ctx)
    rows: list[StepResult] = []
    if not gpu_nodes:
        rows = [skipped(ALL, step, "no node is expected to have GPUs")]
    elif not ctx.apply:
        rows = [skipped(n, step, f"plan mode: would run a Job asking for 1 nvidia.com/gpu on {n} "
                                 f"({p.validation.image}, nvidia-smi -L)") for n in gpu_nodes]
    elif kube is None:
        rows = [failed(ALL, step, "no cluster connection (see the kubeconfig step)")]
    else:
        rows = _run_smoke(ctx, kube, gpu_nodes)
    return ctx.phase.record("smoke", rows, "GPU smoke job")


def _run_smoke(ctx, kube: Kube, gpu_nodes: list[str]) -> list[StepResult]:
    p = ctx.params
    step = "verify | GPU smoke job"
    suffix = os.urandom(3).hex()
    jobs = {n: nodes.smoke_job(n, p.validation.image, f"mlplat-gpu-smoke-{n}-{suffix}"[:63].rstrip("-"))
            for n in gpu_nodes}
    created = apply(kube, list(jobs.values()), dry_run=False, progress=False, note=lambda m: None)
    rows: list[StepResult] = []
    job_res = kube.resource("Job", "batch/v1")
    pod_res = kube.resource("Pod", "v1")
    for (n, job), res in zip(jobs.items(), created):
        t0 = time.monotonic()
        name = job["metadata"]["name"]
        if not res.ok:
            rows.append(failed(n, step, res.message))
            continue
        try:
            wait_for(kube, "Job", name, "default", timeout=_timeout(ctx), progress=False)
            pods = kube.list(pod_res, "default", selector=f"job-name={name}")
            where = ", ".join(sorted({(x.get("spec") or {}).get("nodeName", "?") for x in pods})) or "?"
            if nodes.simulated(p):
                msg = (f"scheduled on {where} with 1 nvidia.com/gpu and marked complete by KWOK: scheduling proven; "
                       "no GPU code ran (lab)")
            else:
                msg = f"ran on {where}: nvidia-smi -L succeeded"
            rows.append(StepResult(host=n, step=step, message=msg, duration=time.monotonic() - t0))
        except (WaitTimeout, WaitFailed) as e:
            pods = kube.list(pod_res, "default", selector=f"job-name={name}")
            why = "; ".join(_pod_why(x) for x in pods) or "no pod was created"
            rows.append(failed(n, step, f"Job {name} did not complete: {e}; pods: {why}",
                               duration=time.monotonic() - t0))
        finally:
            try:
                kube.delete(job_res, name, "default", propagation="Background")
            except KubeError:
                pass
    return rows


def _pod_why(pod: dict) -> str:
    st = pod.get("status") or {}
    bits = [f"{pod['metadata']['name']} {st.get('phase', '?')}"]
    for c in st.get("conditions") or []:
        if c.get("status") != "True" and c.get("message"):
            bits.append(c["message"])
    for cs in st.get("containerStatuses") or []:
        w = (cs.get("state") or {}).get("waiting") or {}
        if w.get("reason"):
            bits.append(f"{w['reason']}: {w.get('message', '')}")
    return " ".join(bits)


def finish() -> Table:
    """Close the phase: writes the verdict JSON and fails the notebook when a step failed."""
    ctx = _ctx()
    pool = ctx.extra.get("pool")
    if pool is not None:
        pool.close()
    if kc.existing(ctx.params):
        ctx.phase.note("existing cluster (kubernetes.existing_kubeconfig): packages, kubeadm init/join and the "
                       "kubeconfig fetch were not run; the kubeadm path is covered by plan mode and golden tests")
    return common.finish(NUMBER)
