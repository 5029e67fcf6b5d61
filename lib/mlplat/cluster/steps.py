"""Cluster-side step helpers shared by phases 30, 40 and 99: apply with one table row per object,
plan rows when there is no cluster to dry-run against yet, and rollout waits as rows."""

from __future__ import annotations

import time

from ..kube import Kube, WaitFailed, WaitTimeout, apply, ref, wait_for
from ..report import StepResult, failed


def apply_rows(kube: Kube, objs: list[dict], step: str, *, dry_run: bool, note=None) -> list[StepResult]:
    """Server-side apply (or dry run) of ``objs``; one row per object, named ``step``, whose message
    starts with the object (``Deployment istio-system/istiod: unchanged``)."""
    if not objs:
        return []
    rs = apply(kube, objs, dry_run=dry_run, progress=False, note=note or (lambda m: None))
    for r in rs:
        label = r.step.split(" | ", 1)[1] if " | " in r.step else r.step
        if not r.message.startswith(label):
            r.message = f"{label}: {r.message}"
        r.step = step
    return rs


def planned_rows(objs: list[dict], step: str, host: str, why: str) -> list[StepResult]:
    """Rows for objects that cannot be dry-run yet (no cluster): each 'would apply'."""
    return [StepResult(host=host, step=step, changed=True, message=f"{ref(o)}: would apply ({why})") for o in objs]


def wait_rows(kube: Kube, workloads: list[tuple[str, str, str]], step: str, timeout: float = 300.0,
              suffix: str = "") -> list[StepResult]:
    """Wait for each (kind, namespace, name) to be available/ready; one row each."""
    out = []
    deadline = time.monotonic() + timeout
    for kind, ns, name in workloads:
        t0 = time.monotonic()
        what = f"{kind} {ns}/{name}"
        try:
            objs = wait_for(kube, kind, name, ns, timeout=max(1.0, deadline - time.monotonic()), progress=False)
            st = (objs[0].get("status") or {}) if objs else {}
            if kind == "DaemonSet":
                detail = f"{st.get('numberReady', 0)}/{st.get('desiredNumberScheduled', 0)} pods ready"
            else:
                detail = f"{st.get('availableReplicas', 0)}/{(objs[0].get('spec') or {}).get('replicas', 1)} available"
            out.append(StepResult(host=kube.name, step=step, message=f"{what}: {detail}{suffix}",
                                  duration=time.monotonic() - t0))
        except WaitTimeout as e:
            why = "; ".join(f"{k}: {v}" for k, v in (e.missing or {}).items()) or str(e)
            out.append(failed(kube.name, step, f"{what}: not ready after {timeout:g} s ({why})",
                              duration=time.monotonic() - t0))
        except (WaitFailed, Exception) as e:  # noqa: BLE001 - a missing kind or an API error: that row fails
            out.append(failed(kube.name, step, f"{what}: {type(e).__name__}: {e}", duration=time.monotonic() - t0))
    return out
