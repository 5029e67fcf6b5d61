"""Phase 30, kubernetes: a kubeadm cluster with GPU scheduling, or an existing cluster made ready.

Steps (one notebook cell each):

1. ``packages``: the per-minor pkgs.k8s.io repository (or ``mirrors.kubernetes``; on Debian/Ubuntu
   its signing key first, then the list file that names it) and pinned,
   held kubelet/kubeadm/kubectl on every host (on the real-node lab, which reaches no repository:
   the lab-built binaries copied from ``lab.binaries_dir`` with the kubelet's unit files);
2. ``config``: the kubeadm config (v1beta4 for 1.31+, v1beta3 before) rendered from the params,
   validated (and checked by the real ``kubeadm config validate`` when a kubeadm binary is at hand);
   each host's cgroup version against ``kubernetes.allow_cgroup_v1``;
3. ``init``: ``kubeadm init`` on the first control plane, or the cluster found there reused;
4. ``join``: a fresh token (``kubeadm token create --print-join-command``, parsed), every other
   host joined, the token deleted;
5. ``kubeconfig``: the admin kubeconfig fetched to ``~/.kube/mlplat-<site>.conf`` and the API
   server's answer checked;
6. ``cni``: flannel from the offline bundle, its network set to ``kubernetes.pod_cidr`` and each
   node's announced address as its interface (``--iface``); or
   (``kubernetes.cni: bridge``) the CNI bridge plugin on every host with host-gw routes;
7. ``device_plugin``: NVIDIA's device plugin DaemonSet from the offline bundle (skipped when no host has GPUs);
8. ``labels``: node labels (worker role, ``nvidia.com/gpu.present``, GPU model);
9. ``verify``: every node Ready and its ``nvidia.com/gpu`` allocatable equal to the expectation;
10. ``network``: on nodes that run pods: containerd as every node's runtime, CoreDNS Ready and
    answering, a ClusterIP Service reached from another node;
11. ``smoke``: a Job asking for one GPU on each GPU node.

With ``kubernetes.existing_kubeconfig`` (how the phase runs on the KWOK lab) steps 1-5 are skipped
with the reason and the rest run against that cluster. On the lab's KWOK nodes the GPU counts are
simulated (``lab.simulated_gpus``), the smoke Job proves scheduling only and the network checks
are skipped (nothing runs there); the tables say so.
"""

from __future__ import annotations

import os
import shutil
import time

import pandas as pd
import yaml

from ..cluster import bundle, cni as bridge, kubeadm, kubeconfig as kc, netcheck, nodes, packages as pk
from ..cluster.remote import run_steps, sh_each
from ..cluster.steps import apply_rows, planned_rows, wait_rows
from ..hosts import HostPool
from ..kube import Kube, KubeError, WaitFailed, WaitTimeout, apply, pod_logs, wait_for
from ..kube.diagnose import IMAGE_PULL_REASONS
from ..params.schema import ROLE_CONTROL_PLANE
from ..params.versions import fmt, minor
from ..report import StepResult, Table, failed, register_secret, skipped
from . import common

NUMBER, NAME = "30", "kubernetes"
KUBEADM_ENV = "MLPLAT_KUBEADM"
ALL = "(cluster)"
# A control plane that is there already is read back (its kubeadm-config) before it is reused; an
# API server that restarts answers within these tries.
REUSE_READS, REUSE_PAUSE = 4, 5.0


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
            {"setting": "CNI", "value": {"bridge": "bridge (CNI bridge plugin on every host, host-gw routes)",
                                          "none": "none (bring your own)"}.get(p.kubernetes.cni, p.kubernetes.cni)}]
    if pk.lab_binaries(p) and not kc.existing(p):
        rows.append({"setting": "packages", "value": f"lab: no package repository; the lab-built binaries from "
                                                     f"{pk.lab_binaries(p)} are copied"})
    if p.kubernetes.allow_cgroup_v1:
        rows.append({"setting": "cgroup v1", "value": f"allowed (kubeadm preflight {kubeadm.CGROUP_V1_PREFLIGHT} "
                                                      "ignored, failCgroupV1: false)"})
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
    step = pk.STEP
    rows = _existing_skip(ctx, step)
    if rows is None:
        steps = [s for h in ctx.params.hosts for s in pk.install_steps(ctx.params, h)]
        rows = run_steps(_pool(ctx), steps, ctx.apply, step)
        lab = pk.lab_binaries(ctx.params)
        for r in rows:
            if lab:
                _lab_packages_message(ctx, r, lab)
            elif r.step == step and r.ok and "probe" in r.data and not r.message.startswith("unchanged"):
                miss = pk.missing(ctx.params, pk.parse_probe(r.data["probe"]))
                if miss:
                    r.message = f"{'needed' if ctx.apply else 'needs'} {', '.join(miss)}; " + r.message
    return ctx.phase.record("packages", rows, "Kubernetes packages")


def images() -> Table:
    """Air-gapped sites: every image in ``kubernetes.image_archives`` imported into each host's
    containerd before ``kubeadm init``, only where the host lacks it (mlplat.images.preload, the code
    phase 50 imports Kubeflow's images with), so kubeadm, kube-proxy, CoreDNS and the checks never pull."""
    from ..images import preload

    ctx = _ctx()
    step = "images | preload"
    rows = _existing_skip(ctx, step)
    title = "Image kit"
    if rows is None:
        where = ctx.params.kubernetes.image_archives
        if not where:
            rows = [skipped(ALL, step, "kubernetes.image_archives is not set: the nodes pull kubeadm's images from "
                                       f"{ctx.params.kubernetes.image_repository or kubeadm.DEFAULT_REGISTRY}")]
        else:
            try:
                index = preload.kit_index(where)
                archives = {n: p for n, (p, _d) in index.items()}
            except preload.KitError as e:
                rows = [failed(ALL, step, str(e))]
            else:
                title = f"Image kit: {len(archives)} images from {where}"
                pool = _pool(ctx)
                present, probes = preload.probe(pool, "images | probe")
                if ctx.apply:
                    rows = [r for r in probes if not r.ok] + preload.import_missing(
                        pool, archives, present, step, digests={n: d for n, (_p, d) in index.items()})
                else:
                    rows = []
                    for r in probes:
                        if not r.ok:  # containerd not running yet (phase 20 not applied): say what would be done
                            rows.append(skipped(r.host, step, f"containerd not answering ({r.message}); apply would "
                                                              f"import the {len(archives)} images it lacks"))
                            continue
                        have = present[r.host].digests
                        lacks = [n for n, (_p, d) in index.items() if n not in have or (d and have[n] != d)]
                        rows.append(StepResult(r.host, step, message=f"would import {len(lacks)} of {len(archives)}"
                                               + (f": {', '.join(lacks[:4])}" + (" ..." if len(lacks) > 4 else "")
                                                  if lacks else " (all present)")))
    return ctx.phase.record("images", rows, title)


def _lab_packages_message(ctx, r: StepResult, src: str) -> None:
    """The real-node lab's row: what was (or would be) copied, or why the lab's binaries cannot be."""
    if "probe" not in r.data:
        return
    probe = pk.parse_lab_probe(r.data["probe"])
    problems = pk.lab_problems(ctx.params, probe)
    want = kubeadm.kubernetes_version(ctx.params)
    if problems:
        r.ok = False
        r.message = "lab: no package repository, and the lab's binaries cannot be used: " + "; ".join(problems)
        return
    if not r.ok or r.message.startswith("unchanged"):
        return
    verb = "copied" if ctx.apply else "would copy"
    what = (f"{verb} the lab-built {want} {', '.join(probe.differs)} from {src} to {pk.BIN_DIR}"
            if probe.differs else f"the lab-built {want} binaries are in place")
    files = [f for f in r.data.get("files", []) if f in r.diff]
    if files:
        what += f"; {'wrote' if ctx.apply else 'would write'} {', '.join(files)}"
    r.message = f"lab: no package repository; {what}"


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
    if p.kubernetes.allow_cgroup_v1 and not errs:
        note = kubeadm.cgroup_v1_note(p)
        rows.append(StepResult(host="(params)", step=step, message=note))
        ctx.phase.note(note)
    cgroup_failed = False
    if kc.existing(p):
        for r in rows:
            if r.ok:
                r.skipped = True
                r.message = "skipped: existing cluster, config not used; " + r.message
    elif not errs:
        cg = _cgroup_rows(ctx)
        cgroup_failed = any(not r.ok for r in cg)
        rows += cg
    for r in rows:
        r.duration = time.monotonic() - t0
    ctx.phase.record("config", rows, "kubeadm config")
    ctx.extra["config_ok"] = not errs and not cgroup_failed
    if not errs and not kc.existing(p):
        print(f"# {kubeadm.INIT_CONFIG} as rendered (join configs follow the same API version)\n{text}")
    return Table(pd.DataFrame([{"status": r.status, "host": r.host, "message": r.message} for r in rows]),
                 "kubeadm config")


CGROUP_PROBE = "stat -fc %T /sys/fs/cgroup/"


def _cgroup_rows(ctx) -> list[StepResult]:
    """Each host's cgroup version (read-only) against ``kubernetes.allow_cgroup_v1``: cgroup v1
    without it fails from Kubernetes 1.35 (the kubelet refuses to start), and warns on 1.34."""
    p = ctx.params
    step = "kubeadm | cgroup version"
    m = minor(p.versions.kubernetes)
    allow = p.kubernetes.allow_cgroup_v1
    out = []
    for r in sh_each(_pool(ctx), lambda h: CGROUP_PROBE, step, timeout=60):
        fs = (r.data.get("stdout") or "").strip()
        if not r.ok or not fs:
            out.append(StepResult(host=r.host, step=step, message=f"warning: could not read the cgroup version "
                                                                  f"({r.message}); kubeadm's preflight checks it"))
        elif fs == "cgroup2fs":
            out.append(StepResult(host=r.host, step=step, message="cgroup v2" + (
                " (kubernetes.allow_cgroup_v1 is set, not needed here)" if allow else "")))
        elif allow:
            out.append(StepResult(host=r.host, step=step, message="cgroup v1: allowed (kubernetes.allow_cgroup_v1)"))
        elif m >= (1, 35):
            out.append(failed(r.host, step, f"cgroup v1 on this host: the kubelet {fmt(m)} refuses to start on it and "
                                            "kubeadm's SystemVerification preflight check fails; set "
                                            "kubernetes.allow_cgroup_v1: true, or boot the host with cgroup v2"))
        else:
            out.append(StepResult(host=r.host, step=step, message=(
                f"warning: cgroup v1 on this host: Kubernetes {fmt(m)} still runs on it (kubeadm's SystemVerification "
                "warns; cgroup v1 is deprecated and fails from 1.35): set kubernetes.allow_cgroup_v1: true to say so, "
                "or move the host to cgroup v2 before upgrading")))
    return out


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
    conn = _pool(ctx).connection(r.host)
    for attempt in range(REUSE_READS):
        got = conn.sudo(kubeadm.EXISTING_CONFIG_COMMAND, timeout=60)
        if got.ok:
            break
        if attempt + 1 < REUSE_READS:
            time.sleep(REUSE_PAUSE)
    if not got.ok:
        # kubeadm writes admin.conf before it waits for the control plane: an init that failed at
        # that wait (cgroup driver, pause image, firewall) leaves admin.conf behind. Not reusable.
        r.ok, r.changed = False, False
        r.message = (f"{kubeadm.ADMIN_CONF} exists on {r.host} but its API server does not answer "
                     f"({got.summary()}): a kubeadm init that stopped halfway? Run 99_teardown (kubeadm "
                     f"reset) on {r.host}, then apply again")
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
        first = kubeadm.first_control_plane(p).name
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
                        rows.append(failed(first, step, str(e)))
                        info = None
                    if info:
                        register_secret(info.token)
                        key = None
                        if "certificate_key" in captured:
                            try:
                                key = kubeadm.parse_certificate_key(captured["certificate_key"])
                            except kubeadm.JoinParseError as e:
                                rows.append(failed(first, step, str(e)))
                        if key:
                            register_secret(key)
                        plan = [s for s in kubeadm.join_plan(p, info, key) if s.host in todo]
                        # Control planes join one at a time (each adds an etcd member; kubeadm's
                        # docs join them sequentially), then the workers all at once. Without the
                        # certificate key they cannot fetch the cluster's CA keys: not run.
                        cps = [s for s in plan if ROLE_CONTROL_PLANE in p.host(s.host).roles]
                        for s_ in cps:
                            if not key:
                                rows.append(failed(s_.host, step, "not joined: no certificate key (kubeadm init phase "
                                                   f"upload-certs failed on {first}, see the token rows)"))
                                continue
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


def _bundle_daemonsets(ctx, load, step: str) -> list[StepResult]:
    """Objects from the offline bundle (``load(params)``) applied, waiting for their DaemonSets."""
    try:
        objs = load(ctx.params)
    except bundle.BundleMissing as e:
        return [failed(ALL, step, str(e))]
    ds = [("DaemonSet", o["metadata"].get("namespace", ""), o["metadata"]["name"])
          for o in objs if o["kind"] == "DaemonSet"]
    return _apply_or_plan(ctx, objs, step, ds)


def _timeout(ctx) -> float:
    return 120.0 if nodes.simulated(ctx.params) else 600.0


def cni() -> Table:
    """flannel from the offline bundle, with its network set to the pod CIDR; or the bridge CNI
    (``kubernetes.cni: bridge``) written on every host, with routes to the other nodes' pods."""
    ctx = _ctx()
    p = ctx.params
    if p.kubernetes.cni == "bridge":
        rows = _bridge(ctx)
        return ctx.phase.record("cni", rows, f"bridge CNI (pods {p.kubernetes.pod_cidr}, host-gw routes)")
    step = "cni | flannel"
    if p.kubernetes.cni == "none":
        rows = [skipped(ALL, step, "kubernetes.cni is none: bring your own CNI")]
    else:
        # flannel's CNI plugin delegates to the standard plugins (bridge, host-local, portmap,
        # loopback): checked on hosts this phase built, as for the bridge CNI. A host without them
        # fails here by name; flannel is applied all the same (its pods use the host network).
        rows = [] if kc.existing(p) else _cni_plugins(ctx, _pool(ctx))[0]
        rows += _bundle_daemonsets(ctx, bundle.flannel, step)
    return ctx.phase.record("cni", rows, f"flannel {p.versions.flannel} (pods {p.kubernetes.pod_cidr})")


ROUTES_NOTE = ("bridge CNI: the routes to the other nodes' pod ranges live in the running kernel only and are gone "
               "after a host reboots: rerun 30_kubernetes then (its cni step puts them back and changes nothing else), "
               "or persist them the distribution's way (NetworkManager ipv4.routes, netplan routes:)")


def _bridge(ctx) -> list[StepResult]:
    """The bridge CNI: plugins checked on every host, then per host its conflist (own pod range)
    and a route to every other node's pod range via that node's InternalIP."""
    p = ctx.params
    step = "cni | bridge"
    if kc.existing(p):
        why = ("KWOK nodes (lab.nodes: kwok) have no kubelet and run no pods: no CNI to configure"
               if nodes.simulated(p) else "existing cluster (kubernetes.existing_kubeconfig): phase 30 writes "
                                          "nothing on its hosts; its nodes keep the CNI they have")
        return [skipped(ALL, step, why)]
    pool = _pool(ctx)
    rows, usable = _cni_plugins(ctx, pool)
    kube = _kube(ctx)
    if kube is None:
        rows += [StepResult(host=h, step=step, changed=True, message=(
            f"would write {bridge.CONFLIST} (bridge {bridge.BRIDGE} over the node's spec.podCIDR, known once it "
            "joined) and routes to the other nodes' pod ranges (no cluster yet)")) for h in usable]
        return rows
    try:
        nets = _node_networks(ctx, kube)
    except KubeError as e:
        return rows + [failed(kube.name, step, f"cannot list nodes: {e}")]
    steps = []
    pending = [k for k in ("init", "join") if any(r.changed for r in ctx.phase.steps.get(k, []))]
    for h in p.hosts:
        if h.name not in usable:
            continue
        n = nets.get(h.name)
        if n is None or not n.pod_cidr:
            why = (f"node {h.name} is not in the cluster: did kubeadm join run on it?" if n is None else
                   f"node {h.name} has no spec.podCIDR: the kube-controller-manager allocates node pod ranges "
                   "only with --allocate-node-cidrs, which kubeadm sets when networking.podSubnet is set "
                   "(look at its log)")
            rows.append(failed(h.name, step, why) if ctx.apply or not pending else
                        skipped(h.name, step, f"not yet: {why} (this plan changes {', '.join(pending)} first)"))
            continue
        steps.append(bridge.host_step(p, h, n.pod_cidr, bridge.routes_for(h.name, nets)))
    for r in run_steps(pool, steps, ctx.apply, step):
        s_ = next(x for x in steps if x.host == r.host)
        if r.ok and r.message.startswith("unchanged: "):
            r.message = f"unchanged: {s_.why}"
        elif r.ok:
            r.message = f"{s_.why}; {r.message}"
        rows.append(r)
    ctx.phase.note(ROUTES_NOTE)
    return rows


def _cni_plugins(ctx, pool) -> tuple[list[StepResult], list[str]]:
    """The standard CNI plugins (bridge, host-local, portmap, loopback) on every host, where containerd
    looks for them; the distribution's copies linked there when that is where they are. Returns the
    rows and the hosts that have them."""
    rows: list[StepResult] = []
    usable: list[str] = []
    for r in sh_each(pool, lambda h: bridge.plugin_check(), "cni | plugins", timeout=60):
        text = r.data.get("stdout") or "" if r.ok else ""
        problem = (f"could not check the CNI plugins: {r.message}" if not r.ok else bridge.plugin_problem(text))
        link = bridge.link_command(text) if r.ok else None
        if link and ctx.apply:
            done = pool.connection(r.host).sudo(link)
            if done.ok:
                usable.append(r.host)
                rows.append(StepResult(host=r.host, step="cni | plugins", changed=True, message=(
                    f"linked the distribution's plugins ({bridge.distro_dirs(text)}) into {bridge.BIN_DIR}, where "
                    f"containerd looks: {', '.join(bridge.PLUGINS)}")))
                continue
            problem += f"; linking them failed: {done.summary()}"
        elif link:
            usable.append(r.host)
            rows.append(StepResult(host=r.host, step="cni | plugins", changed=True, message=(
                f"would link the distribution's plugins ({bridge.distro_dirs(text)}) into {bridge.BIN_DIR}")))
            continue
        if problem:
            rows.append(failed(r.host, "cni | plugins", problem))
        else:
            usable.append(r.host)
            rows.append(StepResult(host=r.host, step="cni | plugins",
                                   message=f"{', '.join(bridge.PLUGINS)} in {bridge.BIN_DIR}"))
    # Before the packages step has run, plugins the kubelet's package brings (kubernetes-cni) are
    # not there yet: a plan says so instead of failing.
    _soften_plan(ctx, rows, ("packages",))
    return rows, usable


def _node_networks(ctx, kube: Kube) -> dict[str, bridge.NodeNet]:
    """Node pod ranges and addresses; in apply mode, wait (a minute at most) until every params
    host's node has its pod range (the kube-controller-manager assigns it right after joining)."""
    deadline = time.monotonic() + (60.0 if ctx.apply else 0.0)
    while True:
        nets = bridge.node_networks(kube.list(kube.resource("Node", "v1")), ctx.params)
        if all(nets.get(h.name) and nets[h.name].pod_cidr for h in ctx.params.hosts) or time.monotonic() >= deadline:
            return nets
        time.sleep(3)


def device_plugin() -> Table:
    """NVIDIA device plugin DaemonSet from the offline bundle (not on a cluster without GPUs)."""
    ctx = _ctx()
    p = ctx.params
    step = "gpu | device plugin"
    if not nodes.simulated(p) and not any(e.gpus for e in nodes.expected_gpus(p).values()):
        # Without NVML the plugin exits on every node (failOnInitError), so its DaemonSet would never
        # be ready; a CPU-only cluster (the real-node lab) has nothing for it to advertise.
        rows = [skipped(ALL, step, "no host is expected to have GPUs (hosts[].gpus are all 0): the device plugin "
                                   "would only crash-loop on these nodes")]
    else:
        rows = _bundle_daemonsets(ctx, bundle.device_plugin, step)
        if nodes.simulated(p) and not any(r.status == "failed" for r in rows):
            ctx.phase.note("lab: the device plugin's pods are KWOK pods (nothing runs); nvidia.com/gpu on the "
                           "lab nodes is simulated by KWOK (lab.simulated_gpus), not advertised by the plugin")
    return ctx.phase.record("device_plugin", rows, f"NVIDIA device plugin {p.versions.device_plugin}")


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
        # A plan that changes the cluster first cannot judge the end state now: say what is off
        # today without failing the plan.
        _soften_plan(ctx, rows, ("init", "join", "cni", "device_plugin", "labels"))
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


NET_STEPS = ("verify | node runtime", "verify | CoreDNS", "verify | DNS lookup", "verify | Service across nodes")


def network() -> Table:
    """Nodes that run pods: containerd as every node's runtime, CoreDNS Ready and answering, and a
    ClusterIP Service reached from a pod on another node. Test pods are deleted afterwards."""
    ctx = _ctx()
    p = ctx.params
    kube = _kube(ctx)
    if nodes.simulated(p):
        rows = [skipped(ALL, s_, "KWOK nodes (lab.nodes: kwok) have no container runtime and run no pods; "
                                 "real nodes (lab.nodes: real) or a real site run this check") for s_ in NET_STEPS]
    elif kube is None:
        rows = [skipped(ALL, s_, "no cluster yet (plan mode before kubeadm init)") for s_ in NET_STEPS]
    else:
        rows = _network_checks(ctx, kube)
        _soften_plan(ctx, rows, ("init", "join", "cni"))
    return ctx.phase.record("network", rows, "Runtime, DNS and Services")


def _soften_plan(ctx, rows: list[StepResult], before: tuple[str, ...]) -> None:
    """In a plan that changes the cluster first, what is off today is 'not yet', not a failure."""
    pending = [k for k in before if any(r.changed for r in ctx.phase.steps.get(k, []))]
    if ctx.apply or not pending:
        return
    for r in rows:
        if not r.ok:
            r.ok, r.skipped = True, True
            r.message = f"not yet: {r.message} (this plan changes {', '.join(pending)} first; apply mode judges it)"


def _network_checks(ctx, kube: Kube) -> list[StepResult]:
    p = ctx.params
    image = p.kubernetes.net_check_image
    try:
        node_list = kube.list(kube.resource("Node", "v1"))
    except KubeError as e:
        return [failed(kube.name, s_, f"cannot list nodes: {e}") for s_ in NET_STEPS]
    rows = netcheck.runtime_rows(node_list, p)
    rows.append(_coredns_check(ctx, kube))
    server, client = netcheck.pick_nodes(node_list, p)
    dns_node = client or server
    if not ctx.apply:
        want = netcheck.kubernetes_service_ip(p)
        rows.append(skipped(dns_node or ALL, NET_STEPS[2], (
            f"plan mode: would run a pod ({image}) on {dns_node or 'a node'}: nslookup {netcheck.KUBERNETES_FQDN}, "
            f"expecting {want}")))
        rows.append(skipped(client or ALL, NET_STEPS[3], (
            f"plan mode: would serve busybox httpd on {server or 'a node'} behind a ClusterIP Service and fetch it "
            f"with wget from a pod on {client or 'another node'} ({image})")))
        return rows
    if server is None:
        why = "no Ready node to run the test pods on (see the node runtime rows)"
        return rows + [failed(ALL, NET_STEPS[2], why), failed(ALL, NET_STEPS[3], why)]
    suffix = os.urandom(3).hex()
    ns = f"{netcheck.NS_PREFIX}-{suffix}"
    timeout = min(_timeout(ctx), 300.0)
    try:
        created = apply(kube, [netcheck.namespace(ns)], dry_run=False, progress=False, note=lambda m: None)
        if not all(r.ok for r in created):
            why = f"cannot create namespace {ns}: {'; '.join(r.message for r in created)}"
            return rows + [failed(kube.name, NET_STEPS[2], why), failed(kube.name, NET_STEPS[3], why)]
        rows.append(_dns_check(ctx, kube, ns, dns_node, image, timeout))
        rows.append(_service_check(ctx, kube, ns, server, client, image, timeout))
    finally:
        try:
            kube.delete(kube.resource("Namespace", "v1"), ns, propagation="Background")
        except KubeError as e:
            ctx.phase.note(f"network check: namespace {ns} could not be deleted ({e}); delete it by hand "
                           "(or 99_teardown removes it)")
    return rows


def _coredns_check(ctx, kube: Kube) -> StepResult:
    step = NET_STEPS[1]
    t0 = time.monotonic()
    # In apply mode, wait for the pods themselves (up to 5 min): right after init, or after the
    # hosts restarted, the Deployment may still report the availability it had before.
    deadline = t0 + (min(_timeout(ctx), 300.0) if ctx.apply else 0.0)
    while True:
        try:
            pods = kube.list(kube.resource("Pod", "v1"), "kube-system", selector=netcheck.COREDNS_SELECTOR)
        except KubeError as e:
            return failed(kube.name, step, f"cannot list CoreDNS pods: {e}")
        r = netcheck.coredns_row(pods, kube.name, step)
        if r.ok or time.monotonic() >= deadline:
            break
        time.sleep(2.0)
    r.duration = time.monotonic() - t0
    return r


def _pod_done(obj: dict) -> tuple[bool, str]:
    """Wait condition: the pod ended (Succeeded or Failed); stop early when its image cannot be had."""
    img = netcheck.image_problem(obj)
    if img:
        raise WaitFailed(img)
    phase = (obj.get("status") or {}).get("phase", "Pending")
    return phase in ("Succeeded", "Failed"), phase


def _run_pod(kube: Kube, pod: dict, timeout: float, condition=_pod_done) -> tuple[dict | None, str | None]:
    """Create the pod and wait; (the pod as last seen, a problem text or None)."""
    name, ns = pod["metadata"]["name"], pod["metadata"]["namespace"]
    res = apply(kube, [pod], dry_run=False, progress=False, note=lambda m: None)
    if not res[0].ok:
        return None, res[0].message
    problem = None
    try:
        wait_for(kube, "Pod", name, ns, condition=condition, timeout=timeout, progress=False)
    except WaitFailed as e:
        problem = str(e)
    except WaitTimeout:
        problem = f"not done after {timeout:g} s"
    got = kube.get_or_none(kube.resource("Pod", "v1").path(ns, name))
    return got, problem


def _log_tail(kube: Kube, name: str, ns: str, lines: int = 3) -> str:
    """The last lines of a test pod's log, on one line ('' when there is none)."""
    try:
        text = pod_logs(kube, name, ns, tail_lines=40)
    except KubeError:
        return ""
    return " | ".join(ln.strip() for ln in text.strip().splitlines()[-lines:] if ln.strip())


def _pod_failure(pod: dict | None, node: str, image: str, problem: str, log: str = "") -> str:
    img = netcheck.image_problem(pod) if pod else None
    if img or any(r in problem for r in IMAGE_PULL_REASONS):
        return (f"net check image {image} cannot be pulled on {node} ({img or problem}): preload it on every node "
                "or set kubernetes.net_check_image to one the nodes have")
    return (f"pod on {node}: {problem}" + (f"; {netcheck.pod_why(pod)}" if pod else "")
            + (f"; its log ends: {log}" if log else ""))


def _dns_check(ctx, kube: Kube, ns: str, node: str, image: str, timeout: float) -> StepResult:
    step = NET_STEPS[2]
    t0 = time.monotonic()
    want = netcheck.kubernetes_service_ip(ctx.params)
    pod, problem = _run_pod(kube, netcheck.dns_pod("dns", ns, image, node, want), timeout)
    if pod is None or (problem and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")):
        log = _log_tail(kube, "dns", ns) if pod else ""
        return failed(node, step, "DNS lookup not run: " + _pod_failure(pod, node, image, problem or "?", log),
                      duration=time.monotonic() - t0)
    succeeded = (pod.get("status") or {}).get("phase") == "Succeeded"
    try:
        log = pod_logs(kube, "dns", ns, tail_lines=40)
    except KubeError as e:
        log = ""
        problem = f"could not read its log: {e}"
    ok, detail = netcheck.dns_verdict(log, succeeded, want)
    msg = f"from a pod on {node}: {detail}" + (f" ({problem})" if problem and not ok else "")
    return StepResult(host=node, step=step, ok=ok, message=msg, duration=time.monotonic() - t0,
                      data={"log": log[-2000:]})


def _service_check(ctx, kube: Kube, ns: str, server: str, client: str | None, image: str,
                   timeout: float) -> StepResult:
    step = NET_STEPS[3]
    t0 = time.monotonic()
    token = f"mlplat-netcheck-{ns.rsplit('-', 1)[-1]}"
    where = client or server
    across = f"from {where} to {server}" if client else f"on {server} (a single-node cluster: client on the same node)"
    svc = apply(kube, [netcheck.service("web", ns)], dry_run=False, progress=False, note=lambda m: None)
    if not svc[0].ok:
        return failed(where, step, f"cannot create the Service: {svc[0].message}")
    srv, problem = _run_pod(kube, netcheck.server_pod("web", ns, image, server, token), timeout,
                            condition=_server_ready)
    if problem:
        return failed(where, step, "Service check not run: the server " + _pod_failure(srv, server, image, problem),
                      duration=time.monotonic() - t0)
    got = kube.get_or_none(kube.resource("Service", "v1").path(ns, "web")) or {}
    cluster_ip = (got.get("spec") or {}).get("clusterIP", "")
    pod, problem = _run_pod(kube, netcheck.client_pod("client", ns, image, where, "web", cluster_ip), timeout)
    if pod is None or (problem and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")):
        log = _log_tail(kube, "client", ns) if pod else ""
        return failed(where, step, "Service check not run: the client "
                      + _pod_failure(pod, where, image, problem or "?", log), duration=time.monotonic() - t0)
    try:
        log = pod_logs(kube, "client", ns, tail_lines=40)
    except KubeError as e:
        log = f"could not read its log: {e}"
    ok, detail = netcheck.service_verdict(log, token)
    fqdn = netcheck.service_fqdn("web", ns)
    return StepResult(host=where, step=step, ok=ok, duration=time.monotonic() - t0, data={"log": log[-2000:]},
                      message=f"http://{fqdn}:{netcheck.SERVICE_PORT} ({cluster_ip}) {across}: {detail}")


def _server_ready(obj: dict) -> tuple[bool, str]:
    img = netcheck.image_problem(obj)
    if img:
        raise WaitFailed(img)
    phase = (obj.get("status") or {}).get("phase", "Pending")
    if phase in ("Succeeded", "Failed"):
        raise WaitFailed(f"httpd ended ({phase})")
    ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                for c in (obj.get("status") or {}).get("conditions") or [])
    return ready, "Ready" if ready else phase


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
            why = "; ".join(netcheck.pod_why(x) for x in pods) or "no pod was created"
            rows.append(failed(n, step, f"Job {name} did not complete: {e}; pods: {why}",
                               duration=time.monotonic() - t0))
        finally:
            try:
                kube.delete(job_res, name, "default", propagation="Background")
            except KubeError:
                pass
    return rows


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
