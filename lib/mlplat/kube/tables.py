"""Pods, events, nodes and logs as tables and text (what kubectl get/describe/logs show)."""

from __future__ import annotations

from datetime import datetime, timezone

import pandas as pd

from ..report import Table
from .client import Kube


def parse_time(ts: str | None) -> datetime | None:
    if not ts:
        return None
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return None


def age(ts: str | None, now: datetime | None = None) -> str:
    """kubectl-style age: 45s, 3m12s, 5h, 2d."""
    t = parse_time(ts)
    if t is None:
        return ""
    s = int(((now or datetime.now(timezone.utc)) - t).total_seconds())
    if s < 0:
        s = 0
    if s < 120:
        return f"{s}s"
    if s < 600:
        return f"{s // 60}m{s % 60}s"
    if s < 3 * 3600:
        return f"{s // 60}m"
    if s < 2 * 86400:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def pod_status(pod: dict) -> str:
    """The STATUS column of ``kubectl get pods``: a waiting/terminated reason when there is one
    (ImagePullBackOff, CrashLoopBackOff, Completed...), Terminating, else the phase."""
    md, st = pod.get("metadata") or {}, pod.get("status") or {}
    reason = st.get("reason") or st.get("phase") or "Pending"
    for cs in st.get("initContainerStatuses") or []:
        state = cs.get("state") or {}
        if (state.get("terminated") or {}).get("exitCode", 0) != 0:
            return f"Init:{state['terminated'].get('reason') or 'Error'}"
        if state.get("waiting") and state["waiting"].get("reason") not in (None, "PodInitializing"):
            return f"Init:{state['waiting']['reason']}"
    for cs in st.get("containerStatuses") or []:
        state = cs.get("state") or {}
        if state.get("waiting") and state["waiting"].get("reason"):
            reason = state["waiting"]["reason"]
        elif state.get("terminated") and reason not in ("Running",):
            reason = state["terminated"].get("reason") or reason
    if md.get("deletionTimestamp"):
        return "Terminating"
    return reason


def pod_rows(pods: list[dict]) -> list[dict]:
    rows = []
    for p in pods:
        md, spec, st = p.get("metadata") or {}, p.get("spec") or {}, p.get("status") or {}
        css = st.get("containerStatuses") or []
        ready = sum(1 for c in css if c.get("ready"))
        gpus = 0
        for c in spec.get("containers") or []:
            res = c.get("resources") or {}
            v = (res.get("limits") or {}).get("nvidia.com/gpu") or (res.get("requests") or {}).get("nvidia.com/gpu")
            gpus += int(v) if v else 0
        rows.append({
            "namespace": md.get("namespace", ""), "name": md.get("name", ""), "status": pod_status(p),
            "ready": f"{ready}/{len(spec.get('containers') or [])}",
            "restarts": sum(int(c.get("restartCount", 0)) for c in css),
            "node": spec.get("nodeName", ""), "gpus": gpus, "age": age(md.get("creationTimestamp")),
            "images": ", ".join(c.get("image", "") for c in spec.get("containers") or []),
        })
    return rows


def pods_table(kube: Kube, namespace: str | None = None, selector: str | None = None, *,
               field_selector: str | None = None, title: str = "") -> Table:
    """Pods (of one namespace, or all) as a table: namespace, name, status, ready, restarts,
    node, gpus, age, images."""
    res = kube.resource("Pod", "v1")
    pods = kube.list(res, namespace, selector=selector, field_selector=field_selector)
    pods.sort(key=lambda p: (p["metadata"].get("namespace", ""), p["metadata"]["name"]))
    cols = ["namespace", "name", "status", "ready", "restarts", "node", "gpus", "age", "images"]
    frame = pd.DataFrame(pod_rows(pods), columns=cols)
    return Table(frame, title or f"Pods{' in ' + namespace if namespace else ''}", status_col=None)


def event_rows(events: list[dict]) -> list[dict]:
    rows = []
    for e in events:
        io = e.get("involvedObject") or e.get("regarding") or {}
        last = (e.get("lastTimestamp") or (e.get("series") or {}).get("lastObservedTime")
                or e.get("eventTime") or (e.get("metadata") or {}).get("creationTimestamp"))
        rows.append({
            "last_seen": age(last), "_t": parse_time(last) or datetime.min.replace(tzinfo=timezone.utc),
            "type": e.get("type", ""), "reason": e.get("reason", ""),
            "object": f"{io.get('kind', '')}/{io.get('name', '')}",
            "namespace": io.get("namespace") or (e.get("metadata") or {}).get("namespace", ""),
            "message": (e.get("message") or e.get("note") or "").strip(),
            "count": e.get("count") or (e.get("series") or {}).get("count") or 1,
            "source": (e.get("source") or {}).get("component") or e.get("reportingComponent")
            or e.get("reportingController", ""),
        })
    rows.sort(key=lambda r: r["_t"])
    for r in rows:
        r.pop("_t")
    return rows


def events(kube: Kube, namespace: str | None = None, *, kind: str | None = None, name: str | None = None,
           warnings_only: bool = False) -> list[dict]:
    """Core v1 events, optionally for one object and/or only warnings, oldest first."""
    fs = []
    if kind:
        fs.append(f"involvedObject.kind={kind}")
    if name:
        fs.append(f"involvedObject.name={name}")
    if warnings_only:
        fs.append("type=Warning")
    res = kube.resource("Event", "v1")
    return kube.list(res, namespace, field_selector=",".join(fs) or None)


def events_table(kube: Kube, namespace: str | None = None, *, kind: str | None = None, name: str | None = None,
                 warnings_only: bool = False, limit: int = 50, title: str = "") -> Table:
    """Events as a table (newest ``limit``, oldest first): last_seen, type, reason, object,
    namespace, message, count, source."""
    rows = event_rows(events(kube, namespace, kind=kind, name=name, warnings_only=warnings_only))[-limit:]
    cols = ["last_seen", "type", "reason", "object", "namespace", "message", "count", "source"]
    return Table(pd.DataFrame(rows, columns=cols),
                 title or f"Events{' in ' + namespace if namespace else ''}", status_col=None)


def pod_logs(kube: Kube, name: str, namespace: str | None = None, *, container: str | None = None,
             tail_lines: int | None = None, previous: bool = False, since_seconds: int | None = None,
             timestamps: bool = False, limit_bytes: int | None = 5_000_000) -> str:
    """The log of one pod's container as text (``kubectl logs``)."""
    res = kube.resource("Pod", "v1")
    out = kube.request("GET", res.path(namespace or kube.namespace, name, "log"), query={
        "container": container, "tailLines": tail_lines, "previous": "true" if previous else None,
        "sinceSeconds": since_seconds, "timestamps": "true" if timestamps else None, "limitBytes": limit_bytes,
    }, accept="*/*")
    if out is None:
        return ""
    return out if isinstance(out, str) else str(out)


def node_rows(nodes: list[dict]) -> list[dict]:
    rows = []
    for n in nodes:
        md, spec, st = n.get("metadata") or {}, n.get("spec") or {}, n.get("status") or {}
        conds = {c.get("type"): c for c in st.get("conditions") or []}
        ready = conds.get("Ready") or {}
        status = "Ready" if ready.get("status") == "True" else "NotReady"
        if spec.get("unschedulable"):
            status += ",SchedulingDisabled"
        roles = sorted(k.split("/", 1)[1] for k in (md.get("labels") or {}) if k.startswith("node-role.kubernetes.io/"))
        rows.append({
            "name": md.get("name", ""), "status": status, "roles": ",".join(roles),
            "gpu_allocatable": (st.get("allocatable") or {}).get("nvidia.com/gpu", "0"),
            "gpu_capacity": (st.get("capacity") or {}).get("nvidia.com/gpu", "0"),
            "version": (st.get("nodeInfo") or {}).get("kubeletVersion", ""),
            "age": age(md.get("creationTimestamp")),
            "ready_reason": ready.get("reason", "") if status != "Ready" else "",
            "ready_message": ready.get("message", "") if status != "Ready" else "",
        })
    return rows


def nodes_table(kube: Kube, title: str = "Nodes") -> Table:
    nodes = kube.list(kube.resource("Node", "v1"))
    nodes.sort(key=lambda n: n["metadata"]["name"])
    cols = ["name", "status", "roles", "gpu_allocatable", "gpu_capacity", "version", "age", "ready_reason",
            "ready_message"]
    return Table(pd.DataFrame(node_rows(nodes), columns=cols), title, status_col=None)
