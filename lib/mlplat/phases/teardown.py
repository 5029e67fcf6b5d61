"""Phase 99, teardown: take out what phases 30-60 put in, and bring the hosts back to their pre-30 state.

Refuses to change anything without ``confirm: yes`` (the params' ``confirm`` or the notebook's
``confirm`` parameter); plan mode needs no confirm and lists what would go.

Steps (one notebook cell each):

1. ``guard``: confirm given (apply mode);
2. ``cluster_objects``: every object mlplat's field manager wrote (phases 30-60), deleted in a
   safe order: webhooks first, namespaces and CRDs last; waits until they are gone and, if a
   namespace hangs in Terminating, finalizes it (confirm was given for exactly this);
3. ``node_labels``: the node labels mlplat set, released;
4. ``reset``: ``kubeadm reset -f`` on every host (workers first), then what it leaves: the CNI
   configuration (flannel's or the bridge CNI's, with its leases), the cni0/flannel links, the
   routes to other nodes' pod ranges, kubeadm's files in /etc/kubernetes, and the
   Kubernetes/flannel/CNI iptables rules (only those; other rules stay);
5. ``kubeconfig``: the fetched admin kubeconfig removed;
6. ``packages``: kubelet/kubeadm/kubectl and their repository removed, only with ``remove_packages``;
   on the real-node lab (``lab.binaries_dir``) the binaries and kubelet unit files phase 30 copied
   are always removed (no package manager was involved; the hosts go back to their pre-30 state).

An existing cluster (``kubernetes.existing_kubeconfig``, the lab's KWOK flavour) keeps its nodes:
phase 30 ran no kubeadm on those hosts and wrote nothing there, so steps 4-6 have nothing to undo
and say so; steps 2-3 still remove everything mlplat applied, after which 30 runs again cleanly.
"""

from __future__ import annotations

import time

import pandas as pd

from ..cluster import inventory as inv, kubeconfig as kc, packages as pk
from ..cluster.remote import run_steps
from ..hosts import HostPool
from ..kube import Kube, KubeError, apply
from ..kube.diagnose import finalize_namespace
from ..params.schema import ROLE_CONTROL_PLANE
from ..report import StepResult, Table, failed, skipped
from . import common

NUMBER, NAME = "99", "teardown"
ALL = "(cluster)"
GONE_TIMEOUT = 120.0  # seconds for deleted namespaces and CRDs to disappear before finalizing them


def setup(params_file: str = "", mode: str = "plan", run_dir: str = "", confirm: bool = False,
          remove_packages: bool = False) -> Table:
    """Load and validate the params; show what this run uses and whether it may change anything."""
    ctx = common.setup(NUMBER, NAME, params_file, mode, run_dir, confirm)
    ctx.extra["remove_packages"] = bool(remove_packages)
    table = common.header_table(ctx)
    rows = [{"setting": "confirm", "value": "yes" if ctx.confirm else "no (apply mode refuses)"},
            {"setting": "cluster", "value": ("existing (nodes kept)" if kc.existing(ctx.params)
                                             else "kubeadm (hosts are reset)")},
            {"setting": "remove packages", "value": "yes" if remove_packages else "no"}]
    if pk.lab_binaries(ctx.params):
        rows.append({"setting": "lab binaries", "value": f"the kubeadm, kubelet, kubectl and unit files phase 30 "
                                                         f"copied from {pk.lab_binaries(ctx.params)} are removed"})
    table.frame = pd.concat([table.frame, pd.DataFrame(rows)], ignore_index=True)
    return table


def _ctx():
    return common.context(NUMBER)


def _allowed(ctx) -> bool:
    return not ctx.apply or ctx.confirm


def _refused(ctx, step: str) -> list[StepResult] | None:
    if not _allowed(ctx):
        return [skipped(ALL, step, "refused: confirm is not set (nothing was changed)")]
    return None


def _kube(ctx) -> Kube | None:
    """The cluster connection, or None while there is no kubeconfig (reason in extra["kube_error"])."""
    return common.kube(ctx)


def _pool(ctx) -> HostPool:
    if ctx.extra.get("pool") is None:
        ctx.extra["pool"] = HostPool(ctx.params, base_dir=ctx.params_path.parent)
    return ctx.extra["pool"]


def guard() -> Table:
    """Refuse to change anything unless confirm is set."""
    ctx = _ctx()
    step = "guard | confirm"
    if not ctx.apply:
        rows = [StepResult(host=ALL, step=step, message="plan mode: read-only, lists what apply would remove "
                                                         "(apply needs confirm: yes)")]
    elif ctx.confirm:
        rows = [StepResult(host=ALL, step=step, message="confirm: yes: removing what phases 30-60 created")]
    else:
        rows = [failed(ALL, step, "teardown refused: confirm is not set. Nothing was changed. Set confirm: yes "
                                  "in the params (or the notebook's confirm parameter) to tear down")]
    return ctx.phase.record("guard", rows, "Confirm")


def cluster_objects() -> Table:
    """Delete every object mlplat's field manager wrote, webhooks first, namespaces and CRDs last."""
    ctx = _ctx()
    step = "cluster | delete what mlplat applied"
    rows = _refused(ctx, step)
    kube = _kube(ctx)
    if rows is None and kube is None:
        rows = [skipped(ALL, step, f"no cluster to clean: {ctx.extra.get('kube_error')}")]
    if rows is None:
        t0 = time.monotonic()
        try:
            owned, problems = inv.scan(kube, ctx.params.kubernetes.field_manager)
        except KubeError as e:
            owned, problems = [], [f"the API server does not answer: {e}"]
        ctx.extra["owned"] = owned
        rows = [failed(kube.name, step, f"could not list {p}") for p in problems]
        outcomes = dict((o.ref, out) for o, out in inv.delete_all(kube, owned, dry_run=not ctx.apply))
        for o in owned:
            if o.action == "delete":
                out = outcomes.get(o.ref, "not attempted")
                ok = not out.startswith("failed")
                rows.append(StepResult(host=kube.name, step=step, ok=ok, changed=ok and out != "already gone",
                                       message=f"{o.ref}: {out}"))
            elif o.action == "inside-namespace":
                rows.append(StepResult(host=kube.name, step=step, changed=True,
                                       message=f"{o.ref}: {'would go' if not ctx.apply else 'goes'} with its namespace"))
            elif o.action == "keep":
                rows.append(StepResult(host=kube.name, step=step, message=f"{o.ref}: kept ({o.why})"))
        if ctx.apply and any(o.action == "delete" for o in owned):
            rows += _wait_and_finalize(ctx, kube, owned)
        if not owned and not problems:
            rows.append(StepResult(host=kube.name, step=step, message="nothing applied by "
                                   f"{ctx.params.kubernetes.field_manager!r} is left in the cluster"))
        for r in rows:
            r.duration = r.duration or time.monotonic() - t0
    return ctx.phase.record("cluster_objects", rows, "Cluster objects mlplat applied")


def _wait_and_finalize(ctx, kube: Kube, owned: list[inv.Owned]) -> list[StepResult]:
    """Wait for the deleted namespaces and CRDs to go. What hangs (finalizers whose controller is
    gone, or never ran: the lab's KWOK pods) is finalized, since confirm was given for exactly this."""
    step = "cluster | gone"
    left = inv.wait_gone(kube, owned, timeout=GONE_TIMEOUT)
    rows = []
    for ref_, why in sorted(left.items(), key=lambda kv: not kv[0].startswith("CustomResourceDefinition")):
        kind, _, name = ref_.partition(" ")
        if kind == "CustomResourceDefinition":
            try:
                done = inv.strip_custom_resource_finalizers(kube, name)
                still = inv.wait_gone(kube, [o for o in owned if o.kind == kind and o.name == name],
                                      timeout=GONE_TIMEOUT)
                rows.append(StepResult(host=kube.name, step=step, ok=not still, changed=True,
                                       message=f"{ref_} hung ({why}); " + ("; ".join(done) or "no finalizers found")
                                               + ("; now gone" if not still else f"; still there: {still}")))
            except KubeError as e:
                rows.append(failed(kube.name, step, f"{ref_} still exists ({why}) and its custom resources could not "
                                                    f"be finalized: {e}"))
        elif kind == "Namespace":
            try:
                done = finalize_namespace(kube, name)
                ok = any("is gone" in d for d in done)
                rows.append(StepResult(host=kube.name, step=step, ok=ok, changed=True,
                                       message=f"namespace {name} hung in Terminating ({why}); finalized: "
                                               + "; ".join(done)))
            except KubeError as e:
                rows.append(failed(kube.name, step, f"namespace {name} is stuck in Terminating ({why}) and could "
                                                    f"not be finalized: {e}"))
        else:
            rows.append(failed(kube.name, step, f"{ref_} still exists after {GONE_TIMEOUT:g} s: {why}"))
    if not left:
        n_ns = sum(1 for o in owned if o.kind == "Namespace" and o.action == "delete")
        n_crd = sum(1 for o in owned if o.kind == "CustomResourceDefinition" and o.action == "delete")
        rows.append(StepResult(host=kube.name, step=step, message=f"all gone ({n_ns} namespace(s), {n_crd} CRD(s))"))
    return rows


def node_labels() -> Table:
    """Release the node labels mlplat set (labels that others also own stay)."""
    ctx = _ctx()
    step = "cluster | node labels"
    rows = _refused(ctx, step)
    kube = _kube(ctx)
    if rows is None and kube is None:
        rows = [skipped(ALL, step, "no cluster")]
    if rows is None:
        owned = ctx.extra.get("owned")
        if owned is None:
            owned, _ = inv.scan(kube, ctx.params.kubernetes.field_manager)
        names = [o.name for o in owned if o.action == "release-labels"]
        if not names:
            rows = [StepResult(host=kube.name, step=step, message="no node carries labels of mlplat's")]
        else:
            from ..cluster.nodes import release_objects

            res = apply(kube, release_objects(names), dry_run=not ctx.apply, progress=False, note=lambda m: None)
            rows = []
            for n, r in zip(names, res):
                rows.append(StepResult(host=n, step=step, ok=r.ok, changed=r.ok,
                                       message=("released mlplat's labels" if ctx.apply else "would release mlplat's labels")
                                       if r.ok else r.message, diff=r.diff))
    return ctx.phase.record("node_labels", rows, "Node labels")


def _host_skip(ctx, step: str) -> list[StepResult] | None:
    if kc.existing(ctx.params):
        return [skipped(h.name, step, "existing cluster (kubernetes.existing_kubeconfig): phase 30 ran no kubeadm "
                                      "and wrote nothing on this host, so there is nothing to reset; its node is kept")
                for h in ctx.params.hosts]
    return _refused(ctx, step)


def reset() -> Table:
    """kubeadm reset on every host (workers first), then CNI and iptables state."""
    ctx = _ctx()
    step = "kubeadm | reset"
    rows = _host_skip(ctx, step)
    if rows is None:
        p = ctx.params
        steps = inv.reset_steps(p)
        pool = _pool(ctx)
        # Workers before control planes: run in two waves.
        workers = [s for s in steps if ROLE_CONTROL_PLANE not in p.host(s.host).roles]
        cps = [s for s in steps if ROLE_CONTROL_PLANE in p.host(s.host).roles]
        rows = run_steps(pool, workers, ctx.apply, step) + run_steps(pool, cps, ctx.apply, step)
        for r in rows:
            if "probe" in r.data and not r.message.startswith("unchanged"):
                found = inv.parse_host_probe(r.data["probe"])
                bits = [f"{k}: {', '.join(v)}" for k, v in found.items() if v and k != "binary"]
                if bits:
                    r.message = f"found {'; '.join(bits)}; " + r.message
            if r.ok and r.changed and ctx.apply:
                r.message = "reset: " + r.message
    return ctx.phase.record("reset", rows, "kubeadm reset, CNI, routes and iptables")


def kubeconfig() -> Table:
    """Remove the admin kubeconfig phase 30 fetched (an existing cluster's own kubeconfig stays)."""
    ctx = _ctx()
    step = "kubeconfig | remove"
    p = ctx.params
    if kc.existing(p):
        rows = [skipped("(local)", step, f"kept: {p.kubernetes.existing_kubeconfig} belongs to the existing cluster")]
    else:
        rows = _refused(ctx, step)
        if rows is None:
            path = kc.site_kubeconfig(p)
            if not path.exists():
                rows = [StepResult(host="(local)", step=step, message=f"{path} is already gone")]
            elif not ctx.apply:
                rows = [StepResult(host="(local)", step=step, changed=True, message=f"would remove {path}")]
            else:
                path.unlink()
                ctx.extra.pop("kube", None)
                rows = [StepResult(host="(local)", step=step, changed=True, message=f"removed {path}")]
    return ctx.phase.record("kubeconfig", rows, "Kubeconfig")


def packages() -> Table:
    """Remove kubelet, kubeadm, kubectl and their repository: only with remove_packages."""
    ctx = _ctx()
    step = "packages | remove"
    lab = pk.lab_binaries(ctx.params)
    if not ctx.extra.get("remove_packages") and not lab:
        rows = [skipped(h.name, step, "remove_packages is not set: packages kept") for h in ctx.params.hosts]
    else:
        rows = _host_skip(ctx, step)
        if rows is None:
            rows = run_steps(_pool(ctx), [pk.remove_step(ctx.params, h) for h in ctx.params.hosts], ctx.apply, step)
            if lab:
                for r in rows:
                    found = pk.parse_lab_remove_probe(r.data.get("probe", ""))
                    if r.ok and found and not r.message.startswith("unchanged"):
                        r.message = (f"lab: {'removed' if ctx.apply else 'would remove'} what phase 30 copied "
                                     f"({', '.join(found)})")
                    elif r.ok and r.message.startswith("unchanged"):
                        r.message = f"unchanged: lab: nothing phase 30 copied from {lab} is left"
    return ctx.phase.record("packages", rows, "Kubernetes packages")


def finish() -> Table:
    """Close the phase: writes the verdict JSON; fails when a step failed or confirm was missing."""
    ctx = _ctx()
    pool = ctx.extra.get("pool")
    if pool is not None:
        pool.close()
    return common.finish(NUMBER)
