"""Server-side apply of many objects, in a safe order, with retries and an honest ``changed``.

Order: Namespaces and CRDs first; then (after every CRD applied here is Established) everything
else; admission webhooks and API services last, so a webhook whose backend is not running yet
cannot reject the objects applied with it. Objects of one tier are applied in parallel.

Per object: GET the live object, then PATCH ``application/apply-patch+yaml`` with one field
manager (``force`` takes over fields other managers own). ``changed`` compares the live object
before with the result after, both stripped of server-owned noise (managedFields,
resourceVersion, uid, timestamps, generation, status), so an idempotent re-apply reports
``changed=False``. Plan mode sends the same PATCH with ``dryRun=All`` and shows a unified diff of
live against the dry-run result; nothing is written.

Errors come in two kinds. Temporary ones (a webhook without endpoints, 409 conflict, 429, 5xx,
connection refused or reset while the API server restarts) are retried with exponential backoff,
bounded by attempts and time per object and by a total for the whole apply (and once one object
gives up on an API server that does not answer at all, the others stop at once instead of each
waiting out its own backoff); each retry is announced with its reason. Permanent
ones (400/422 invalid, 403 forbidden, 404 no such kind or namespace) stop that object at once with
the reason and what to do.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from ..report import StepResult
from .client import APPLY_PATCH, MERGE_PATCH, Kube, KubeError
from .discovery import NoKindMatch, Resource
from .manifests import diff, load_manifests, ref, tier
from .wait import WaitFailed, WaitTimeout, wait_for

Note = Callable[[str], None]


@dataclass(frozen=True)
class Retry:
    """Backoff for temporary errors: per object at most ``attempts`` tries within ``deadline``
    seconds of its first; delays grow from ``initial`` by ``factor`` up to ``max_delay``. The
    whole apply stops retrying after ``total`` seconds, and once one object has given up because
    the API server does not answer at all, the others do not wait for it again."""

    attempts: int = 12
    initial: float = 0.25
    factor: float = 2.0
    max_delay: float = 5.0
    deadline: float = 120.0
    total: float = 600.0

    def delay(self, attempt: int) -> float:
        """Delay after failed attempt number ``attempt`` (1-based)."""
        return min(self.max_delay, self.initial * self.factor ** (attempt - 1))


NO_RETRY = Retry(attempts=1, deadline=0, total=0)


class _Budget:
    """What all objects of one apply share: the total retry deadline, and whether the API server
    has been found unreachable for good (a give-up on a connection error)."""

    def __init__(self, retry: Retry):
        self.until = time.monotonic() + retry.total
        self.unreachable = ""


def _advice(e: KubeError, obj: dict) -> str:
    """What to do about a permanent error."""
    ns = (obj.get("metadata") or {}).get("namespace")
    if e.status in (400, 422):
        return "the object is invalid for this API server: fix the manifest (the message names the field)"
    if e.status == 403 and "being terminated" in e.message:
        return f"namespace {ns} is stuck in Terminating: run 90_troubleshoot"
    if e.status == 403:
        return "forbidden: the kubeconfig's user lacks the rights (check kubernetes.existing_kubeconfig/context)"
    if e.status == 401:
        return "unauthorized: the kubeconfig's credentials are not accepted (expired certificate or token?)"
    if e.namespace_missing:
        return f"namespace {ns} does not exist: add a Namespace object to the manifests or create it first"
    if e.status == 404:
        return "the API server does not serve this resource: is its CRD applied and is this version served?"
    return ""


def apply(kube: Kube, objs: Iterable[dict] | Any, field_manager: str | None = None, *, dry_run: bool = False,
          force_conflicts: bool = True, retry: Retry | None = None, namespace: str | None = None,
          wait_crds: bool = True, crd_timeout: float = 60.0, workers: int = 8, progress: bool | None = None,
          note: Note | None = None) -> list[StepResult]:
    """Server-side apply ``objs`` (dicts, or anything :func:`load_manifests` takes); one
    :class:`StepResult` per object, in input order.

    ``dry_run=True`` is plan mode: ``dryRun=All``, ``changed`` means "would change", and
    ``diff`` holds the unified diff of live against the dry-run result. ``namespace`` fills in
    namespaced objects that name none (default: the context's namespace). ``note`` receives
    progress notes such as retries (default: printed above the progress bar).
    """
    if not (isinstance(objs, list) and all(isinstance(o, dict) for o in objs)):
        objs = load_manifests(objs)
    objs = list(objs)
    manager = field_manager or kube.field_manager
    retry = retry or Retry()
    note = note or _default_note
    default_ns = namespace or kube.namespace
    results: list[StepResult | None] = [None] * len(objs)

    batch_namespaces = {o["metadata"]["name"] for o in objs if o.get("kind") == "Namespace"}
    batch_crds = _crd_resources(objs)

    from ..report.progress import tqdm

    bar = tqdm(total=len(objs), desc=("plan" if dry_run else "apply") + f" ({kube.name})", unit="obj",
               disable=None if progress is None else not progress, leave=False)
    lock = threading.Lock()

    def announce(msg: str) -> None:
        with lock:
            note(msg)

    budget = _Budget(retry)

    def run(i: int, blocked: dict[str, str]) -> None:
        obj = objs[i]
        r = _one(kube, obj, manager, dry_run, force_conflicts, retry, default_ns, batch_namespaces,
                 batch_crds, blocked, announce, budget)
        results[i] = r
        with lock:
            bar.update(1)

    try:
        blocked: dict[str, str] = {}  # "group/Kind" -> why its CRD is not usable
        for t in (0, 1, 2):
            idx = [i for i, o in enumerate(objs) if tier(o) == t]
            if not idx:
                continue
            with ThreadPoolExecutor(max_workers=max(1, workers)) as ex:
                list(ex.map(lambda i: run(i, blocked), idx))
            if t == 0:
                ok_crds = []
                for i in idx:
                    o = objs[i]
                    if o.get("kind") != "CustomResourceDefinition":
                        continue
                    if results[i] is not None and results[i].ok:
                        ok_crds.append(o)
                    else:
                        blocked[_crd_key(o)] = f"its CRD {o['metadata']['name']} failed to apply"
                if ok_crds and wait_crds and not dry_run and not budget.unreachable:
                    names = [o["metadata"]["name"] for o in ok_crds]
                    try:
                        wait_established(kube, names, crd_timeout, announce)
                    except (WaitTimeout, WaitFailed) as e:
                        missing = getattr(e, "missing", {})
                        for o in ok_crds:
                            if not missing or o["metadata"]["name"] in missing:
                                blocked[_crd_key(o)] = f"its CRD {o['metadata']['name']} is not Established: {e}"
    finally:
        bar.close()
    return [r for r in results if r is not None]


KICK_AFTER = 10.0  # seconds a CRD may sit in "Installing" before it is nudged (a relist of all CRDs is MBs)


def wait_established(kube: Kube, names: list[str], timeout: float, note: Note | None = None) -> None:
    """Wait for CRDs to be Established; nudge any stuck in ``Installing``.

    kube-apiserver queues a CRD for establishing only on an *update* event of its CRD informer
    (apiextensions-apiserver v0.34.4 pkg/apiserver/customresource_handler.go,
    updateCustomResourceDefinition), and the naming controller does nothing once names are
    accepted (pkg/controller/status/naming_controller.go, sync). A CRD whose names were accepted
    just before the API server restarted therefore stays ``Established=False, Installing`` until
    the informer's 5-minute resync. Touching the CRD (an annotation set, then removed) is such an
    update and establishes it at once; the annotation does not stay.
    """
    deadline = time.monotonic() + timeout
    kicked: set[str] = set()
    res = kube.resource("CustomResourceDefinition", "apiextensions.k8s.io/v1")
    while True:
        remaining = deadline - time.monotonic()
        step = min(remaining, KICK_AFTER)
        try:
            wait_for(kube, "CustomResourceDefinition", names, condition="Established", timeout=max(step, 0.1),
                     api_version="apiextensions.k8s.io/v1", progress=False, note=note)
            return
        except WaitTimeout as e:
            if time.monotonic() >= deadline:
                raise
            stuck = [n for n, why in e.missing.items() if "Installing" in why and n not in kicked]
            for n in stuck:
                kicked.add(n)
                try:
                    for value in ("now", None):
                        kube.request("PATCH", res.path(None, n), content_type=MERGE_PATCH, body={
                            "metadata": {"annotations": {"mlplat.io/reestablish": value}}})
                except KubeError:
                    continue
                if note:
                    note(f"CRD {n} stuck in Installing (the API server restarted before establishing it): "
                         "touched it so the API server establishes it now")


def _default_note(msg: str) -> None:
    from ..report.progress import tqdm

    tqdm.write(msg)


def _crd_key(crd: dict) -> str:
    spec = crd.get("spec") or {}
    return f"{spec.get('group', '')}/{(spec.get('names') or {}).get('kind', '')}"


def _crd_resources(objs: list[dict]) -> dict[tuple[str, str, str], Resource]:
    """Resources defined by the CRDs in this batch, so their objects resolve without waiting for
    discovery to catch up (it lags the Established condition by a moment)."""
    out: dict[tuple[str, str, str], Resource] = {}
    for o in objs:
        if o.get("kind") != "CustomResourceDefinition":
            continue
        spec = o.get("spec") or {}
        names = spec.get("names") or {}
        for v in spec.get("versions") or []:
            if v.get("served", True):
                out[(spec.get("group", ""), v["name"], names.get("kind", ""))] = Resource(
                    spec.get("group", ""), v["name"], names.get("plural", ""), names.get("kind", ""),
                    spec.get("scope") == "Namespaced")
    return out


def _one(kube: Kube, obj: dict, manager: str, dry_run: bool, force: bool, retry: Retry, default_ns: str,
         batch_namespaces: set[str], batch_crds: dict, blocked: dict[str, str], note: Note,
         budget: _Budget | None = None) -> StepResult:
    t0 = time.monotonic()
    name = obj["metadata"]["name"]
    api_version, kind = obj["apiVersion"], obj["kind"]
    group, _, version = api_version.rpartition("/")
    label = ref(obj)
    step = f"{'plan' if dry_run else 'apply'} | {label}"
    data = {"apiVersion": api_version, "kind": kind, "name": name, "namespace": None, "attempts": 0, "retries": []}

    def result(ok: bool, changed: bool, message: str, d: str = "", action: str = "") -> StepResult:
        data["action"] = action or ("failed" if not ok else "")
        return StepResult(host=kube.name, step=step, ok=ok, changed=changed, message=message, diff=d,
                          duration=time.monotonic() - t0, data=data)

    why_blocked = blocked.get(f"{group}/{kind}")
    if why_blocked:
        return result(False, False, f"{label}: not applied: {why_blocked}")
    # Shallow copies of what is changed (namespace, aggregated rules): a deep copy of a large CRD
    # costs more than applying it.
    body = dict(obj)
    md = body["metadata"] = dict(obj.get("metadata") or {})
    if kind == "ClusterRole" and body.get("aggregationRule") is not None:
        # The clusterrole-aggregation controller owns the rules of an aggregated ClusterRole;
        # applying the manifest's (empty) rules would take them back on every apply and flap.
        body.pop("rules", None)
    res: Resource | None = batch_crds.get((group, version, kind))
    crd_planned = dry_run and res is not None
    path = ""
    ns: str | None = None
    unset = object()
    live: Any = unset
    attempt = 0
    while True:
        attempt += 1
        data["attempts"] = attempt
        try:
            if res is None:
                res = kube.discovery.resolve(api_version, kind)
                crd_planned = False
            if not path:
                if res.namespaced:
                    ns = md.get("namespace") or default_ns
                    md["namespace"] = ns
                else:
                    md.pop("namespace", None)
                data["namespace"] = ns
                label = ref(body)
                step = f"{'plan' if dry_run else 'apply'} | {label}"
                path = res.path(ns, name)
            if live is unset:
                # The first successful read is the baseline: after a lost response (connection
                # reset during a restart) a retry may find our own write already there.
                live = kube.get_or_none(path)
            out = kube.request("PATCH", path, query={
                "fieldManager": manager, "force": "true" if force else None,
                "dryRun": "All" if dry_run else None}, body=body, content_type=APPLY_PATCH)
            break
        except NoKindMatch as e:
            return result(False, False, f"{label}: {e}", action="failed")
        except KubeError as e:
            ns_planned = dry_run and ns is not None and ns in batch_namespaces
            if dry_run and ((crd_planned and e.resource_missing) or (ns_planned and e.namespace_missing)):
                why = ("its CRD is created by this apply" if crd_planned and e.resource_missing
                       else f"namespace {ns} is created by this apply")
                return result(True, True, f"would create ({why}; not dry-run checked)", diff(None, body, label),
                              action="would create")
            # Right after an API server restart, custom resources answer 404 until the CRD
            # informers sync: a resource discovery knows about is worth a few retries.
            temporary = e.temporary or (e.resource_missing and attempt < 5 and not crd_planned)
            now = time.monotonic()
            delay = retry.delay(attempt)
            why_stop = ""
            if not temporary:
                pass
            elif attempt >= retry.attempts or now - t0 + delay > retry.deadline:
                why_stop = f"gave up after {attempt} attempt(s) in {now - t0:.0f} s"
            elif budget and now + delay > budget.until:
                why_stop = f"gave up after {attempt} attempt(s): the apply's retry budget ({retry.total:g} s) is spent"
            elif budget and budget.unreachable and e.status == 0:
                why_stop = f"gave up at once: {budget.unreachable}"
            if not temporary or why_stop:
                if budget and temporary and e.status == 0 and not budget.unreachable:
                    budget.unreachable = f"the API server did not answer {label} for {now - t0:.0f} s"
                return _give_up(result, label, e, obj, attempt, retry, temporary, why_stop)
            reason = _short(e)
            data["retries"].append(reason)
            note(f"retrying {label} in {delay:.2f} s (attempt {attempt + 1}/{retry.attempts}): {reason}")
            time.sleep(delay)

    if live is None:
        changed, action = True, "would create" if dry_run else "created"
        d = diff(None, out, label) if dry_run else ""  # a creation's diff is the whole manifest
    else:
        d = diff(live, out, label)
        if not dry_run and (live.get("metadata") or {}).get("resourceVersion") == (out.get("metadata") or {}).get("resourceVersion"):
            d = ""
        changed = bool(d)
        action = ("would change" if changed else "no change") if dry_run else ("configured" if changed else "unchanged")
    if (out.get("metadata") or {}).get("deletionTimestamp"):
        fins = ", ".join((out.get("metadata") or {}).get("finalizers") or []) or "none"
        what = "Terminating" if kind == "Namespace" else "being deleted"
        return result(False, changed, f"{label}: {action}, but it is {what} (finalizers: {fins}); it will not "
                      f"stay: wait for the deletion to finish and apply again"
                      + (", or run 90_troubleshoot if it is stuck in Terminating" if kind == "Namespace" else ""),
                      d, action="failed")
    msg = action
    if data["retries"]:
        msg += f" (after {len(data['retries'])} retries: {data['retries'][-1]})"
    return result(True, changed, msg, d, action=action)


def _short(e: KubeError) -> str:
    m = e.message
    if "failed calling webhook" in m or "failed calling admission webhook" in m:
        return f"admission webhook not ready ({'HTTP ' + str(e.status) if e.status else 'no response'}): {m[-200:]}"
    if e.status == 409:
        return f"conflict (HTTP 409): {m[:200]}"
    if e.status == 0:
        return m
    return f"{e} "[:300].strip()


def _give_up(result, label: str, e: KubeError, obj: dict, attempts: int, retry: Retry,
             temporary: bool | None = None, why_stop: str = "") -> StepResult:
    temporary = e.temporary if temporary is None else temporary
    if temporary:
        msg = f"{label}: {e} (temporary error, {why_stop or f'gave up after {attempts} attempt(s)'})"
    else:
        adv = _advice(e, obj)
        msg = f"{label}: {e} (permanent error, not retried" + (f": {adv})" if adv else ")")
    return result(False, False, msg, action="failed")


def summary(results: list[StepResult]) -> dict[str, int]:
    """Counts by action (created, configured, unchanged, would create, ..., failed)."""
    out: dict[str, int] = {}
    for r in results:
        a = r.data.get("action") or r.status
        out[a] = out.get(a, 0) + 1
    return out
