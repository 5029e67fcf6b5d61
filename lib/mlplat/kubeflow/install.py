"""Apply a Kubeflow build to a cluster, verify it, and say how to reach it.

The manifests' README loops ``kubectl apply`` until it succeeds, because webhooks and CRDs come up
while the apply runs. Here :func:`apply_rounds` does that with a bound: :func:`mlplat.kube.apply`
applies server-side in tiers (namespaces and CRDs, then the rest, then webhooks) and retries each
object on temporary errors (a webhook without a backend, a CRD not served yet) with backoff;
objects that still fail with a temporary error are applied again in later rounds until
``timeout``. What still fails at the end is reported per object, with the reason.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

from ..images.inventory import scan
from ..images.refs import try_parse
from ..kube import Kube, KubeError, Retry, WaitFailed, WaitTimeout, apply, wait_for
from ..report import StepResult, failed

Note = Callable[[str], None]
WORKLOAD_KINDS = ("Deployment", "StatefulSet")


def _permanent(r: StepResult) -> bool:
    return "permanent error" in r.message


def apply_rounds(kube: Kube, objs: list[dict], *, dry_run: bool = False, timeout: float = 900.0,
                 field_manager: str | None = None, retry: Retry | None = None, note: Note | None = None,
                 pause: float = 3.0, progress: bool | None = None) -> tuple[list[StepResult], dict]:
    """Server-side apply ``objs``; re-apply those that failed for a temporary reason, in rounds,
    until they succeed or ``timeout`` seconds have passed. Returns one result per object (its
    last attempt) and a summary (rounds, retried objects, seconds)."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    final: dict[int, StepResult] = {}
    pending = list(range(len(objs)))
    rounds = 0
    retried: set[int] = set()
    while pending:
        rounds += 1
        left = max(1.0, deadline - time.monotonic())
        r = retry or Retry(deadline=min(120.0, left))
        if r.deadline > left:
            r = Retry(attempts=r.attempts, initial=r.initial, factor=r.factor, max_delay=r.max_delay, deadline=left)
        results = apply(kube, [objs[i] for i in pending], field_manager, dry_run=dry_run, retry=r,
                        progress=progress, note=note)
        again = []
        for i, res in zip(pending, results):
            prev = final.get(i)
            if prev is not None and res.ok:
                res.data["rounds"] = rounds
                res.message += f" (round {rounds})"
            final[i] = res
            if not res.ok and not _permanent(res):
                again.append(i)
        if not again or dry_run or time.monotonic() + pause >= deadline:
            break
        retried |= set(again)
        if note:
            note(f"apply round {rounds}: {len(again)} object(s) failed for a temporary reason; "
                 f"applying them again in {pause:g} s ({deadline - time.monotonic():.0f} s left)")
        time.sleep(pause)
        pending = again
    out = [final[i] for i in range(len(objs)) if i in final]
    return out, {"rounds": rounds, "retried_objects": len(retried), "seconds": round(time.monotonic() - t0, 1)}


def workloads(objs: Iterable[dict], kinds: tuple[str, ...] = WORKLOAD_KINDS) -> dict[tuple[str, str], list[str]]:
    """(kind, namespace) -> names, for the workloads in a build."""
    out: dict[tuple[str, str], list[str]] = {}
    for o in objs:
        if o.get("kind") in kinds:
            md = o.get("metadata") or {}
            out.setdefault((o["kind"], md.get("namespace") or "default"), []).append(md["name"])
    return {k: sorted(v) for k, v in sorted(out.items())}


def _claims(obj: dict) -> list[str]:
    spec = ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}
    return [v["persistentVolumeClaim"]["claimName"] for v in spec.get("volumes") or []
            if isinstance(v, dict) and (v.get("persistentVolumeClaim") or {}).get("claimName")]


def storage_blockers(kube: Kube, objs: Iterable[dict]) -> dict[tuple[str, str, str], str]:
    """Workloads that cannot become available because a PersistentVolumeClaim they mount can never
    bind: it is Pending and no StorageClass can provision it (none named, no default, or the named
    one missing). (kind, namespace, name) -> why. A claim merely waiting for its first consumer is
    not a blocker."""
    try:
        classes = kube.get("/apis/storage.k8s.io/v1/storageclasses").get("items") or []
    except KubeError:
        return {}
    names = {c["metadata"]["name"] for c in classes}
    default = any((c["metadata"].get("annotations") or {}).get("storageclass.kubernetes.io/is-default-class") == "true"
                  for c in classes)
    out: dict[tuple[str, str, str], str] = {}
    for o in objs:
        if o.get("kind") not in WORKLOAD_KINDS:
            continue
        md = o.get("metadata") or {}
        ns = md.get("namespace") or "default"
        for claim in _claims(o):
            try:
                pvc = kube.get(f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim}")
            except KubeError:
                continue
            if (pvc.get("status") or {}).get("phase") != "Pending":
                continue
            sc = (pvc.get("spec") or {}).get("storageClassName")
            if (sc and sc not in names) or (not sc and not default):
                out[(o["kind"], ns, md["name"])] = (
                    f"PersistentVolumeClaim {ns}/{claim} is Pending and can never bind: "
                    + (f"StorageClass {sc} does not exist" if sc else "the cluster has no default StorageClass")
                    + " (install a storage provisioner and mark a default StorageClass)")
    return out


def verify_workloads(kube: Kube, objs: Iterable[dict], *, timeout: float = 600.0, note: Note | None = None,
                     step: str = "verify | workloads", blocked: dict | None = None) -> list[StepResult]:
    """Every Deployment available and every StatefulSet ready (by watch), one result per object.
    ``blocked`` ((kind, namespace, name) -> why, e.g. :func:`storage_blockers`) are not waited
    for: they fail at once with the reason."""
    objs = list(objs)
    deadline = time.monotonic() + timeout
    rows: list[StepResult] = []
    blocked = blocked or {}
    for (kind, ns), all_names in workloads(objs).items():
        names = [n for n in all_names if (kind, ns, n) not in blocked]
        for n in all_names:
            if (kind, ns, n) in blocked:
                rows.append(failed(kube.name, f"{step} | {kind} {ns}/{n}", f"{kind} {ns}/{n} cannot become "
                                   f"available: {blocked[(kind, ns, n)]}", data={"blocked": blocked[(kind, ns, n)]}))
        if not names:
            continue
        t0 = time.monotonic()
        left = max(1.0, deadline - time.monotonic())
        try:
            got = wait_for(kube, kind, names, ns, timeout=left, progress=False, note=note)
            by = {o["metadata"]["name"]: o for o in got}
            for n in names:
                o = by.get(n, {})
                st = o.get("status") or {}
                msg = (f"{st.get('availableReplicas', st.get('readyReplicas', 0))}/"
                       f"{(o.get('spec') or {}).get('replicas', 1)} available")
                rows.append(StepResult(kube.name, f"{step} | {kind} {ns}/{n}", message=msg,
                                       duration=time.monotonic() - t0))
        except WaitTimeout as e:
            for n in names:
                why = e.missing.get(f"{ns}/{n}") or e.missing.get(n)
                rows.append(failed(kube.name, f"{step} | {kind} {ns}/{n}",
                                   f"{kind} {ns}/{n} not available after {timeout:g} s: {why}") if why else
                            StepResult(kube.name, f"{step} | {kind} {ns}/{n}", message="available"))
        except (WaitFailed, KubeError) as e:
            rows += [failed(kube.name, f"{step} | {kind} {ns}/{n}", f"{kind} {ns}/{n}: {e}") for n in names]
    return rows


# -- Istio ---------------------------------------------------------------------------------------
def istio_images(objs: Iterable[dict]) -> dict[str, set[str]]:
    """Istio image tags named by a build or a folder of Istio manifests: component -> tags
    (``pilot``, ``proxyv2``, ``install-cni``..., and ``sidecar (injector values)`` for the tag the
    injector composes sidecars from)."""
    out: dict[str, set[str]] = {}
    for u in scan(objs).uses:
        ref = try_parse(u.image)
        if ref is None or "istio" not in ref.repository and "istio" not in ref.registry:
            continue
        comp = ref.repository.rsplit("/", 1)[-1]
        if u.source == "composed" and u.kind == "ConfigMap" and u.name == "istio-sidecar-injector":
            comp = "sidecar (injector values)"
        out.setdefault(comp, set()).add(ref.tag or "latest")
    return out


def folder_objects(folder) -> list[dict]:
    """Every YAML document with a ``kind`` under a folder of manifests (patches included, the
    kustomization itself left out): what a folder names, unbuilt."""
    from pathlib import Path

    import yaml

    out: list[dict] = []
    for f in sorted(Path(folder).rglob("*")):
        if f.suffix not in (".yaml", ".yml") or not f.is_file():
            continue
        try:
            docs = list(yaml.safe_load_all(f.read_text()))
        except yaml.YAMLError:
            continue
        out += [d for d in docs if isinstance(d, dict) and d.get("kind") and d.get("kind") != "Kustomization"]
    return out


def live_istio(kube: Kube) -> dict | None:
    """istiod's image in istio-system (None when there is no istiod)."""
    try:
        d = kube.get("/apis/apps/v1/namespaces/istio-system/deployments/istiod")
    except KubeError as e:
        if e.status == 404:
            return None
        raise
    imgs = [c.get("image", "") for c in d["spec"]["template"]["spec"].get("containers", [])]
    ref = try_parse(imgs[0]) if imgs else None
    return {"image": imgs[0] if imgs else "", "tag": ref.tag if ref else ""}


# -- dashboard -----------------------------------------------------------------------------------
def dashboard_text(objs: list[dict], istio_owner: str) -> str:
    """How to reach the central dashboard of this build."""
    names = {(o.get("kind"), (o.get("metadata") or {}).get("namespace"), (o.get("metadata") or {}).get("name"))
             for o in objs}
    if ("Deployment", "kubeflow", "centraldashboard") not in names:
        return ("this build has no central dashboard (training-only profile): use kubectl, or the Kubeflow "
                "Trainer SDK, against the cluster")
    gw = "phase 40's" if istio_owner == "phase40" else "Kubeflow's"
    return ("kubectl port-forward -n istio-system svc/istio-ingressgateway 8080:80, then open http://localhost:8080 "
            f"({gw} Istio ingress gateway; behind Dex: the static user user@example.com, whose default password "
            "the Kubeflow README gives; change it before real use, see common/dex). For a lasting address, "
            "expose svc/istio-ingressgateway as a NodePort or LoadBalancer with TLS")
