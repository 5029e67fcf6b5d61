"""Wait for objects to reach a condition, by WATCH (list once, then follow events).

A watch delivers the change that makes a condition true as it is written, so a wait returns
within milliseconds of readiness instead of up to a poll interval later. When the watch breaks
(an API server restart, a 410 Gone after compaction) the wait lists again and carries on until
its deadline. A timeout names what was still missing and why (the objects' own conditions).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable

from .client import Kube, KubeError
from .discovery import Resource

Check = Callable[[dict], tuple[bool, str]]


class WaitTimeout(TimeoutError):
    """The condition did not hold in time; ``missing`` maps each object to what it lacks."""

    def __init__(self, message: str, missing: dict[str, str]):
        super().__init__(message)
        self.missing = missing


class WaitFailed(RuntimeError):
    """The object reached a terminal state that can never satisfy the condition (Job Failed)."""


# -- condition helpers ----------------------------------------------------------------------
def conditions(obj: dict) -> dict[str, dict]:
    return {c.get("type"): c for c in ((obj.get("status") or {}).get("conditions") or []) if isinstance(c, dict)}


def _cond(obj: dict, ctype: str) -> dict | None:
    return conditions(obj).get(ctype)


def _is_true(obj: dict, ctype: str) -> bool:
    c = _cond(obj, ctype)
    return bool(c) and c.get("status") == "True"


def _why(obj: dict, ctype: str) -> str:
    c = _cond(obj, ctype)
    if not c:
        return f"no {ctype} condition yet"
    bits = [f"{ctype}={c.get('status')}"]
    if c.get("reason"):
        bits.append(c["reason"])
    if c.get("message"):
        bits.append(c["message"])
    return ": ".join(bits)


def _observed(obj: dict) -> bool:
    md = obj.get("metadata") or {}
    st = obj.get("status") or {}
    return st.get("observedGeneration", 0) >= md.get("generation", 0)


def deployment_available(obj: dict) -> tuple[bool, str]:
    """Rollout complete: the controller saw this generation, every replica is updated and
    available, and the Available condition is True (kubectl rollout status semantics)."""
    st = obj.get("status") or {}
    want = (obj.get("spec") or {}).get("replicas", 1)
    if not _observed(obj):
        return False, "the controller has not seen the latest spec yet"
    prog = _cond(obj, "Progressing") or {}
    if prog.get("status") == "False" and prog.get("reason") == "ProgressDeadlineExceeded":
        raise WaitFailed(f"rollout stuck: {_why(obj, 'Progressing')}")
    upd, avail = st.get("updatedReplicas", 0), st.get("availableReplicas", 0)
    if upd < want or avail < want or st.get("replicas", 0) > upd:
        return False, f"{avail}/{want} replicas available, {upd} updated; {_why(obj, 'Available')}"
    if not _is_true(obj, "Available"):
        return False, _why(obj, "Available")
    return True, f"{avail}/{want} available"


def statefulset_ready(obj: dict) -> tuple[bool, str]:
    st = obj.get("status") or {}
    want = (obj.get("spec") or {}).get("replicas", 1)
    if not _observed(obj):
        return False, "the controller has not seen the latest spec yet"
    ready, upd = st.get("readyReplicas", 0), st.get("updatedReplicas", 0)
    rolling = ((obj.get("spec") or {}).get("updateStrategy") or {}).get("type", "RollingUpdate") == "RollingUpdate"
    if ready < want or (rolling and upd < want) or (rolling and st.get("currentRevision") != st.get("updateRevision")):
        return False, f"{ready}/{want} ready, {upd} updated"
    return True, f"{ready}/{want} ready"


def daemonset_ready(obj: dict) -> tuple[bool, str]:
    st = obj.get("status") or {}
    want = st.get("desiredNumberScheduled", 0)
    if not _observed(obj):
        return False, "the controller has not seen the latest spec yet"
    ready, upd = st.get("numberReady", 0), st.get("updatedNumberScheduled", 0)
    if ready < want or upd < want:
        return False, f"{ready}/{want} ready, {upd} updated"
    return True, f"{ready}/{want} ready"


def pod_ready(obj: dict) -> tuple[bool, str]:
    phase = (obj.get("status") or {}).get("phase", "Pending")
    if phase in ("Failed", "Succeeded") and not _is_true(obj, "Ready"):
        raise WaitFailed(f"pod ended ({phase}) without becoming Ready")
    if _is_true(obj, "Ready"):
        return True, "Ready"
    waiting = [f"{cs.get('name')}: {(cs.get('state') or {}).get('waiting', {}).get('reason')}"
               for cs in (obj.get("status") or {}).get("containerStatuses") or []
               if (cs.get("state") or {}).get("waiting")]
    return False, f"{phase}; {_why(obj, 'Ready')}" + (f"; waiting {', '.join(waiting)}" if waiting else "")


def pod_succeeded(obj: dict) -> tuple[bool, str]:
    phase = (obj.get("status") or {}).get("phase", "Pending")
    if phase == "Failed":
        raise WaitFailed("pod Failed")
    return phase == "Succeeded", phase


def job_complete(obj: dict) -> tuple[bool, str]:
    if _is_true(obj, "Failed"):
        raise WaitFailed(f"Job failed: {_why(obj, 'Failed')}")
    st = obj.get("status") or {}
    if _is_true(obj, "Complete"):
        return True, f"{st.get('succeeded', 0)} succeeded"
    return False, f"{st.get('active', 0)} active, {st.get('succeeded', 0)} succeeded, {st.get('failed', 0)} failed"


def job_failed(obj: dict) -> tuple[bool, str]:
    if _is_true(obj, "Complete"):
        raise WaitFailed("Job completed, it will not fail")
    return _is_true(obj, "Failed"), _why(obj, "Failed")


def crd_established(obj: dict) -> tuple[bool, str]:
    if _is_true(obj, "Established") and _is_true(obj, "NamesAccepted") is not False:
        return True, "Established"
    if _cond(obj, "NamesAccepted") and not _is_true(obj, "NamesAccepted"):
        return False, _why(obj, "NamesAccepted")
    return False, _why(obj, "Established")


# Terminal conditions that can never turn into the awaited one (Kubeflow jobs, JobSets, Jobs).
_OPPOSITES = {"Succeeded": ("Failed",), "Complete": ("Failed",), "Completed": ("Failed",),
              "Ready": (), "Available": ()}


def generic_condition(ctype: str) -> Check:
    """``status.conditions[type=ctype].status == "True"``; a True Failed condition ends the wait
    with :class:`WaitFailed` when waiting for Succeeded/Complete."""

    def check(obj: dict) -> tuple[bool, str]:
        for bad in _OPPOSITES.get(ctype, ()):
            if _is_true(obj, bad):
                raise WaitFailed(f"{bad}: {_why(obj, bad)}")
        return _is_true(obj, ctype), _why(obj, ctype)

    check.__name__ = f"condition_{ctype}"
    return check


DEFAULT_CONDITION = {"Deployment": "Available", "StatefulSet": "Ready", "DaemonSet": "Ready",
                     "Pod": "Ready", "Job": "Complete", "CustomResourceDefinition": "Established"}

_BUILTIN: dict[tuple[str, str], Check] = {
    ("Deployment", "Available"): deployment_available,
    ("StatefulSet", "Ready"): statefulset_ready,
    ("DaemonSet", "Ready"): daemonset_ready,
    ("Pod", "Ready"): pod_ready,
    ("Pod", "Succeeded"): pod_succeeded,
    ("Job", "Complete"): job_complete,
    ("Job", "Failed"): job_failed,
    ("CustomResourceDefinition", "Established"): crd_established,
}

DELETED = "Deleted"


def checker(kind: str, condition: str | Check | None) -> tuple[str, Check | None]:
    """The check function for a kind and condition name (None for ``Deleted``)."""
    if callable(condition):
        return getattr(condition, "__name__", "condition"), condition
    name = condition or DEFAULT_CONDITION.get(kind, "Ready")
    if name == DELETED:
        return name, None
    return name, _BUILTIN.get((kind, name)) or generic_condition(name)


# -- the wait -------------------------------------------------------------------------------
@dataclass
class _State:
    objs: dict[str, dict]
    rv: str = ""


def wait_for(kube: Kube, kind: str, name: str | Iterable[str] | None = None, namespace: str | None = None, *,
             selector: str | None = None, condition: str | Check | None = None, timeout: float = 300.0,
             api_version: str | None = None, progress: bool | None = None,
             note: Callable[[str], None] | None = None) -> list[dict]:
    """Wait until objects satisfy a condition; return them (a list, in name order).

    - ``kind``: ``Deployment``, ``StatefulSet``, ``Pod``, ``Job``, ``CustomResourceDefinition``,
      or any served kind (``PyTorchJob``); ``api_version`` picks a version when needed.
    - ``name`` (one or several) or ``selector`` (a label selector: every match must satisfy the
      condition, and at least one must exist).
    - ``condition``: defaults per kind (Deployment Available, StatefulSet/DaemonSet Ready, Pod Ready,
      Job Complete, CRD Established); any other name is a ``status.conditions`` type (PyTorchJob
      ``Succeeded``); ``"Deleted"`` waits for the objects to be gone; or a callable returning
      ``(done, detail)``.
    - ``progress``: a tqdm bar (None: only when attached to a terminal or notebook).

    Raises :class:`WaitTimeout` (saying what is still missing) or :class:`WaitFailed` (a terminal
    state such as Job Failed). Uses list + watch, relisting after a broken watch.
    """
    res = kube.resource(kind, api_version)
    cname, check = checker(res.kind, condition)
    names = [name] if isinstance(name, str) else (sorted(set(name)) if name is not None else None)
    if names is not None and not names:
        return []
    if res.namespaced and namespace is None and names is not None:
        namespace = kube.namespace
    what = _describe(res, names, namespace, selector, cname)
    field_sel = f"metadata.name={names[0]}" if names and len(names) == 1 else None
    deadline = time.monotonic() + timeout
    bar = _bar(what, len(names) if names else 1, progress)
    last: dict[str, str] = {}
    failures, last_note = 0, -1e9
    try:
        while True:
            try:
                items, rv = kube.list_with_version(res, namespace if res.namespaced else None,
                                                   selector=selector, field_selector=field_sel)
                state = _State({_key(o): o for o in items if _wanted(o, names)}, rv)
                done, last = _evaluate(state, names, check)
                _update(bar, last, names)
                if done:
                    return _result(state, names)
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise _timeout(what, timeout, state, names, last)
                    gone = False
                    for ev in kube.watch_lines(res.path(namespace if res.namespaced else None),
                                               {"resourceVersion": state.rv, "labelSelector": selector,
                                                "fieldSelector": field_sel}, remaining):
                        et = ev.get("type")
                        obj = ev.get("object") or {}
                        if et == "ERROR":
                            gone = obj.get("code") == 410
                            if not gone:
                                raise KubeError(obj.get("code") or 500, obj.get("reason", "WatchError"),
                                                obj.get("message", "watch error"))
                            break
                        state.rv = (obj.get("metadata") or {}).get("resourceVersion", state.rv)
                        if et == "BOOKMARK":
                            continue
                        if not _wanted(obj, names):
                            continue
                        if et == "DELETED":
                            state.objs.pop(_key(obj), None)
                        else:
                            obj.setdefault("kind", res.kind)
                            obj.setdefault("apiVersion", res.api_version)
                            state.objs[_key(obj)] = obj
                        done, last = _evaluate(state, names, check)
                        _update(bar, last, names)
                        if done:
                            return _result(state, names)
                        if time.monotonic() > deadline:
                            break
                    if gone:
                        break  # resource version compacted away: list again
            except KubeError as e:
                if not e.temporary and not e.resource_missing:
                    raise
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _timeout(what, timeout, None, names, last, cause=str(e)) from None
                failures += 1
                if note and time.monotonic() - last_note >= 5.0:
                    # Once per outage and then every 5 s, not every 0.5 s retry.
                    last_note = time.monotonic()
                    note(f"wait {what}: {e} ({e.kind_label}); watching again (failure {failures}, "
                         f"{remaining:.0f} s left)")
                time.sleep(min(0.5, remaining))
    finally:
        if bar is not None:
            bar.close()


def _wanted(obj: dict, names: list[str] | None) -> bool:
    return names is None or (obj.get("metadata") or {}).get("name") in names


def _key(obj: dict) -> str:
    md = obj.get("metadata") or {}
    return f"{md.get('namespace') + '/' if md.get('namespace') else ''}{md.get('name')}"


def _evaluate(state: _State, names: list[str] | None, check: Check | None) -> tuple[bool, dict[str, str]]:
    """(all done, {object: what it still lacks}) for the current state."""
    missing: dict[str, str] = {}
    if check is None:  # Deleted
        for k in state.objs:
            missing[k] = "still exists" + _deleting(state.objs[k])
        return not missing, missing
    if names is not None:
        by_name = {(o.get("metadata") or {}).get("name"): o for o in state.objs.values()}
        for n in names:
            o = by_name.get(n)
            if o is None:
                missing[n] = "does not exist yet"
                continue
            ok, why = check(o)
            if not ok:
                missing[_key(o)] = why
        return not missing, missing
    if not state.objs:
        return False, {"(selector)": "no matching object yet"}
    for k, o in state.objs.items():
        ok, why = check(o)
        if not ok:
            missing[k] = why
    return not missing, missing


def _deleting(obj: dict) -> str:
    md = obj.get("metadata") or {}
    if md.get("deletionTimestamp"):
        fin = md.get("finalizers") or []
        return f" (deleting; finalizers: {', '.join(fin)})" if fin else " (deleting)"
    return ""


def _result(state: _State, names: list[str] | None) -> list[dict]:
    if names is None:
        return [state.objs[k] for k in sorted(state.objs)]
    by_name = {(o.get("metadata") or {}).get("name"): o for o in state.objs.values()}
    return [by_name[n] for n in names if n in by_name]


def _describe(res: Resource, names, namespace, selector, cname) -> str:
    if names:
        target = ", ".join(names) if len(names) <= 3 else f"{len(names)} objects"
    else:
        target = f"-l {selector}" if selector else "all"
    where = f" in {namespace}" if namespace and res.namespaced else ""
    return f"{res.kind} {target}{where} {cname}"


def _timeout(what, timeout, state, names, last, cause: str = "") -> WaitTimeout:
    missing = dict(last) or {"?": "no state observed"}
    lines = "; ".join(f"{k}: {v}" for k, v in sorted(missing.items()))
    msg = f"timed out after {timeout:g} s waiting for {what}; still missing: {lines}"
    if cause:
        msg += f" (last error: {cause})"
    return WaitTimeout(msg, missing)


def _bar(what: str, total: int, progress: bool | None):
    if progress is False:
        return None
    from ..report.progress import tqdm

    return tqdm(total=total, desc=f"wait {what}", disable=None if progress is None else not progress,
                leave=False, unit="obj")


def _update(bar, missing: dict[str, str], names) -> None:
    if bar is None:
        return
    total = bar.total or 1
    done = total - len([k for k in missing if k != "(selector)"]) if names else (0 if missing else total)
    bar.n = max(0, min(total, done))
    if missing:
        k, v = next(iter(sorted(missing.items())))
        bar.set_postfix_str(f"{k}: {v}"[:80], refresh=False)
    bar.refresh()

