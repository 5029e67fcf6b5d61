"""Phase 40, istio: Istio from Kubeflow's bundled manifests (or istioctl), its Kiali, Grafana,
Prometheus and Jaeger add-ons, a version guard before anything is applied, and the checks.

Steps (one notebook cell each):

1. ``guard``: the Istio/Kubernetes support table (and, for Kubeflow's Istio, the
   Kubeflow/Kubernetes one) against the cluster's own version and the params; a refused pair stops
   the phase, and ``install``/``addons`` apply nothing (they run the guard themselves when its
   cell was skipped);
2. ``install``: Kubeflow's ``common/istio`` from the offline bundle (kustomize), or the
   istioctl-rendered manifest, applied server-side;
3. ``addons``: ``samples/addons`` of the same Istio release, made to meet Pod Security
   ``restricted`` where the namespace enforces it;
4. ``verify``: istiod, the gateway, Istio CNI and the add-ons available; the sidecar injector
   answering (a dry-run pod in a probe namespace comes back with ``istio-proxy``);
5. ``dashboards``: the port-forward command for each add-on's UI.

On the lab (KWOK nodes) the Istio pods are simulated: the Deployments become available, but no
istiod process runs, so injection cannot be exercised; ``verify`` says so instead of claiming it.
"""

from __future__ import annotations

import os
import time

import pandas as pd

from ..cluster import bundle, istio as ist, kubeconfig as kc, nodes
from ..cluster.steps import apply_rows, planned_rows, wait_rows
from ..kube import Kube, KubeError
from ..report import StepResult, Table, failed, skipped
from . import common

NUMBER, NAME = "40", "istio"
ALL = "(cluster)"
LAB_CANNOT = ("lab: istiod, the ingress gateway, Istio CNI and the add-ons run as KWOK pods: their Deployments "
              "and DaemonSets become available, but no Istio process runs. So the sidecar injector cannot answer "
              "and injection is NOT exercised here, and while istiod does not serve, the injector webhook (it "
              "fails closed) refuses new pods in namespaces labelled istio-injection=enabled. On a real cluster "
              "'verify' proves injection with a dry-run pod in a probe namespace.")


def setup(params_file: str = "", mode: str = "plan", run_dir: str = "", confirm: bool = False) -> Table:
    """Load and validate the params; show what this run uses."""
    ctx = common.setup(NUMBER, NAME, params_file, mode, run_dir, confirm)
    p = ctx.params
    table = common.header_table(ctx)
    rows = [{"setting": "Istio", "value": f"{p.versions.istio} via {p.istio.method}"
             + (f" (Kubeflow {p.versions.kubeflow}'s common/istio)" if p.istio.method == "kubeflow-manifests"
                else f" (profile {p.istio.profile})")},
            {"setting": "add-ons", "value": ", ".join(p.istio.addons) or "none"},
            {"setting": "kubeconfig", "value": str(kc.site_kubeconfig(p))}]
    table.frame = pd.concat([table.frame, pd.DataFrame(rows)], ignore_index=True)
    return table


def _ctx():
    return common.context(NUMBER)


def _kube(ctx) -> Kube | None:
    """The cluster connection, or None while there is no kubeconfig (reason in extra["kube_error"])."""
    return common.kube(ctx)


def _checks(ctx) -> list[ist.GuardCheck]:
    """Run the guard (once per setup); the result decides whether anything may be applied."""
    if "guard" in ctx.extra:
        return ctx.extra["guard"]
    p = ctx.params
    checks: list[ist.GuardCheck] = []
    server = None
    kube = _kube(ctx)
    if kube is not None:
        try:
            server = kube.version().get("gitVersion")
        except KubeError as e:
            checks.append(ist.GuardCheck("cluster | version", False, f"the API server does not answer: {e}",
                                         "check the kubeconfig (30_kubernetes) and that the cluster runs"))
    else:
        checks.append(ist.GuardCheck("cluster | version", not ctx.apply,
                                     f"no cluster to ask: {ctx.extra.get('kube_error')}; checked against the params only",
                                     "run 30_kubernetes first"))
    istioctl_ver = None
    if p.istio.method == "istioctl":
        path = ist.istioctl_path()
        if path is None:
            checks.append(ist.GuardCheck("istio | istioctl", False, "istio.method is istioctl but no istioctl is on PATH",
                                         f"install istioctl {p.versions.istio} or use method kubeflow-manifests"))
        else:
            try:
                istioctl_ver = ist.istioctl_version(path)
            except (ValueError, OSError) as e:
                checks.append(ist.GuardCheck("istio | istioctl", False, f"cannot read istioctl's version: {e}",
                                             "run istioctl version --remote=false by hand"))
    checks += ist.guard(p, server, istioctl_ver)
    ctx.extra["guard"] = checks
    ctx.extra["server_version"] = server
    return checks


def guard() -> Table:
    """The version guard: refuses an unsupported Istio/Kubernetes (or Kubeflow/Kubernetes) pair."""
    ctx = _ctx()
    step = "istio | guard"
    t0 = time.monotonic()
    rows = [StepResult(host="(versions)", step=step, ok=c.ok, message=f"{c.check}: {c.message}"
                       + ("" if c.ok or not c.fix else f"; fix: {c.fix}"), duration=time.monotonic() - t0)
            for c in _checks(ctx)]
    if not ist.guard_ok(_checks(ctx)):
        ctx.phase.note("the version guard refused the stack: nothing was applied")
    return ctx.phase.record("guard", rows, "Version guard (before anything is applied)")


LAB_REAL_CANNOT = ("lab (real nodes): Istio's data plane is Envoy (C++, the proxyv2 image) and neither it nor "
                   "istiod's image can be built on this machine, which reaches no registry: installing would leave "
                   "every Istio pod in ErrImagePull. Istio is exercised on the KWOK lab and in plan mode")


def _refused(ctx, step: str) -> list[StepResult] | None:
    if nodes.real_lab(ctx.params):
        return [skipped(ALL, step, LAB_REAL_CANNOT)]
    if not ist.guard_ok(_checks(ctx)):
        return [skipped(ALL, step, "not applied: the version guard refused the stack (see the guard table)")]
    return None


def _install_objects(ctx) -> list[dict]:
    p = ctx.params
    if p.istio.method == "istioctl":
        path = ist.istioctl_path()
        return ist.istioctl_manifest(path, p.istio.profile)
    root = bundle.kubeflow_manifests(p)
    objs = bundle.build(root, ist.KUBEFLOW_NAMESPACE_PATH)
    for rel in ist.KUBEFLOW_ISTIO_PATHS:
        objs += bundle.build(root, rel)
    return objs


def _apply(ctx, objs: list[dict], step: str) -> list[StepResult]:
    kube = _kube(ctx)
    if kube is None:
        return planned_rows(objs, step, ALL, "no cluster yet: not dry-run checked")
    return apply_rows(kube, objs, step, dry_run=not ctx.apply)


def install() -> Table:
    """Kubeflow's bundled Istio (kustomize build of common/istio), or istioctl's manifest, applied."""
    ctx = _ctx()
    step = "istio | install"
    rows = _refused(ctx, step)
    if rows is None:
        try:
            objs = _install_objects(ctx)
        except (bundle.BundleMissing, RuntimeError, OSError) as e:
            rows = [failed(ALL, step, str(e))]
        else:
            ctx.extra["install_objects"] = objs
            rows = _apply(ctx, objs, step)
    title = (f"Istio {ctx.params.versions.istio} from Kubeflow {ctx.params.versions.kubeflow}'s manifests"
             if ctx.params.istio.method == "kubeflow-manifests" else f"Istio via istioctl ({ctx.params.istio.profile})")
    return ctx.phase.record("install", rows, title)


def _restricted_namespaces(ctx) -> set[str]:
    live = {}
    kube = _kube(ctx)
    if kube is not None:
        try:
            ns = kube.get_or_none(kube.resource("Namespace", "v1").path(None, ist.ISTIO_NS))
            if ns:
                live[ist.ISTIO_NS] = (ns.get("metadata") or {}).get("labels") or {}
        except KubeError:
            pass
    return ist.enforced_restricted(ctx.extra.get("install_objects") or [], live)


def addons() -> Table:
    """Kiali, Grafana, Prometheus and Jaeger from Istio's samples/addons in the offline bundle."""
    ctx = _ctx()
    step = "istio | addons"
    p = ctx.params
    rows = _refused(ctx, step)
    if rows is None and not p.istio.addons:
        rows = [skipped(ALL, step, "istio.addons is empty")]
    if rows is None:
        rows = []
        objs: list[dict] = []
        try:
            for a in p.istio.addons:
                objs += bundle.istio_addon(p, a)
        except bundle.BundleMissing as e:
            rows = [failed(ALL, step, str(e))]
        else:
            restricted = _restricted_namespaces(ctx)
            objs, notes = ist.restricted_pod_security(objs, restricted)
            for n in notes:
                rows.append(StepResult(host=ALL, step="istio | addons pod security",
                                       message=f"{n} (namespace enforces Pod Security restricted)"))
            pre = _planned_namespaces(ctx, objs)
            applied = _apply(ctx, pre + objs, step)
            rows = applied[len(pre):] + rows
    return ctx.phase.record("addons", rows, f"Istio {p.versions.istio} add-ons: {', '.join(p.istio.addons)}")


def _planned_namespaces(ctx, objs: list[dict]) -> list[dict]:
    """In plan mode, the Namespaces that ``install`` would create and the add-ons live in, so the
    dry run knows they are coming (their rows are dropped again)."""
    kube = _kube(ctx)
    if ctx.apply or kube is None:
        return []
    wanted = {(o.get("metadata") or {}).get("namespace") for o in objs} - {None}
    res = kube.resource("Namespace", "v1")
    return [o for o in ctx.extra.get("install_objects") or []
            if o.get("kind") == "Namespace" and o["metadata"]["name"] in wanted
            and kube.get_or_none(res.path(None, o["metadata"]["name"])) is None]


def _workloads(ctx) -> list[tuple[str, str, str]]:
    p = ctx.params
    base = list(ist.KUBEFLOW_WORKLOADS if p.istio.method == "kubeflow-manifests" else ist.ISTIOCTL_WORKLOADS)
    return base + [("Deployment", ist.ISTIO_NS, a) for a in p.istio.addons]


def verify() -> Table:
    """istiod, gateway, CNI and add-ons available; the sidecar injector answering a dry-run pod."""
    ctx = _ctx()
    step = "verify | istio"
    p = ctx.params
    if nodes.real_lab(p):
        return ctx.phase.record("verify", [skipped(ALL, step, LAB_REAL_CANNOT)], "Istio checks")
    kube = _kube(ctx)
    rows: list[StepResult] = []
    if not ist.guard_ok(_checks(ctx)):
        rows = [skipped(ALL, step, "not run: the version guard refused the stack")]
    elif kube is None:
        rows = [skipped(ALL, step, "no cluster yet (plan mode before 30_kubernetes)")]
    elif not ctx.apply and kube.get_or_none(kube.resource("Deployment", "apps/v1").path(ist.ISTIO_NS, "istiod")) is None:
        rows = [skipped(ALL, step, "plan mode: Istio is not installed yet, nothing to check")]
    else:
        sim = nodes.simulated(p)
        rows = wait_rows(kube, _workloads(ctx), "verify | available", timeout=120.0 if sim else 600.0,
                         suffix=" (KWOK pods: no Istio process runs)" if sim else "")
        if sim:
            rows.append(skipped(ALL, "verify | sidecar injection",
                                "lab: no real istiod container (a KWOK pod), so the injector webhook cannot "
                                "answer; injection not exercised"))
            ctx.phase.note(LAB_CANNOT)
        elif not ctx.apply:
            rows.append(skipped(ALL, "verify | sidecar injection", "plan mode: the probe namespace is not created"))
        else:
            rows.append(_injection_probe(ctx, kube))
    return ctx.phase.record("verify", rows, "Istio checks")


def _injection_probe(ctx, kube: Kube) -> StepResult:
    """Create a probe namespace labelled istio-injection=enabled, dry-run a pod in it, delete it."""
    step = "verify | sidecar injection"
    t0 = time.monotonic()
    ns = f"mlplat-istio-probe-{os.urandom(3).hex()}"
    ns_res = kube.resource("Namespace", "v1")
    pod_res = kube.resource("Pod", "v1")
    try:
        kube.request("POST", ns_res.path(), body={"apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": ns, "labels": {"istio-injection": "enabled", "mlplat.io/probe": "istio"}}},
            query={"fieldManager": kube.field_manager})
        got = kube.request("POST", pod_res.path(ns), body=ist.probe_pod(ns),
                           query={"dryRun": "All", "fieldManager": kube.field_manager})
        added = ist.injected(got or {})
        if "istio-proxy" in added:
            return StepResult(host=kube.name, step=step, duration=time.monotonic() - t0,
                              message=f"the injector answered: a dry-run pod in {ns} came back with {', '.join(added)}")
        return failed(kube.name, step, f"the injector did not add istio-proxy to a dry-run pod in {ns} "
                                       f"(containers added: {', '.join(added) or 'none'}): check the "
                                       "istio-sidecar-injector webhook's namespaceSelector and istiod's logs",
                      duration=time.monotonic() - t0)
    except KubeError as e:
        return failed(kube.name, step, f"dry-run pod in {ns} failed: {e}", duration=time.monotonic() - t0)
    finally:
        try:
            kube.delete(ns_res, ns)
        except KubeError:
            pass


def dashboards() -> Table:
    """How to reach each add-on's UI from this machine (kubectl port-forward)."""
    ctx = _ctx()
    p = ctx.params
    path = kc.site_kubeconfig(p)
    ds = ist.dashboards(list(p.istio.addons), str(path) if path else None, p.kubernetes.context)
    frame = pd.DataFrame([{"add-on": d.addon, "service": f"{ist.ISTIO_NS}/{d.service}:{d.port}",
                           "port-forward": d.command, "then open": d.url} for d in ds])
    if nodes.simulated(p) and ds:
        ctx.phase.note("lab: the dashboards' Services have no real backends (KWOK pods), so port-forward "
                       "cannot connect on the lab; the commands are for a real cluster")
    return Table(frame, "Dashboards (kubectl port-forward; or istioctl dashboard <name>)", status_col=None)


def finish() -> Table:
    """Close the phase: writes the verdict JSON and fails the notebook when a step failed."""
    ctx = _ctx()
    if nodes.simulated(ctx.params):
        ctx.phase.note(LAB_CANNOT)
    return common.finish(NUMBER)
