"""Find what keeps a cluster from working, say why, and name the fix.

Each finder returns :class:`Finding` records (what is wrong, what blocks it, the fix) and never
changes anything. The fixers (:func:`finalize_namespace`, :func:`remove_webhooks`) do change
things; the troubleshooting phase calls them only with ``confirm: yes``.

The parse functions at the bottom read the text operators paste (``kubectl describe`` events and
conditions, apply errors) into the same shapes, so a finding can be explained from a pasted error
as well as from the live cluster.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .client import JSON_PATCH, MERGE_PATCH, Kube, KubeError
from .discovery import Resource

GPU = "nvidia.com/gpu"
IMAGE_PULL_REASONS = ("ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull",
                      "RegistryUnavailable")


@dataclass
class Finding:
    """One problem: ``kind`` of finding, the ``object`` it is about, the ``problem``, what
    ``blockers`` hold it, and the ``fix``. ``fixable`` when 90_troubleshoot can fix it on confirm."""

    kind: str
    object: str
    problem: str
    fix: str
    blockers: list[str] = field(default_factory=list)
    fixable: bool = False
    data: dict = field(default_factory=dict)


# -- namespaces stuck in Terminating ---------------------------------------------------------
NS_FINALIZE_EXPLAINED = (
    "on confirm: first remove the finalizers of the objects left in the namespace (their controller is "
    "gone, so nobody else will; this deletes them instead of orphaning them in etcd, where they would "
    "reappear if the namespace is re-created), then PUT the namespace's finalize subresource with "
    "spec.finalizers emptied so it is removed now, also when an unavailable API group keeps the namespace "
    "controller from finishing")


def namespace_blockers(ns: dict) -> list[str]:
    """What the namespace's status.conditions say blocks its deletion (from a live object or a
    pasted ``kubectl get ns -o yaml``; conditions without a type are skipped)."""
    out: list[str] = []
    for c in (ns.get("status") or {}).get("conditions") or []:
        if not isinstance(c, dict) or c.get("status") != "True" or not c.get("type"):
            continue
        t, msg = c["type"], (c.get("message") or "").strip()
        if t == "NamespaceDeletionDiscoveryFailure":
            groups = unavailable_groups(msg)
            out.append("API discovery failed for " + (", ".join(groups) if groups else msg)
                       + ": the namespace controller cannot list those resources, so it cannot finish")
        elif t == "NamespaceContentRemaining":
            rem = remaining_resources(msg)
            out.append("resources remain: " + (", ".join(f"{r} ({n})" for r, n in rem) if rem else msg))
        elif t == "NamespaceFinalizersRemaining":
            fins = remaining_finalizers(msg)
            out.append("finalizers remain: " + (", ".join(f"{f} ({n} objects)" for f, n in fins) if fins else msg))
        elif t == "NamespaceDeletionContentFailure":
            out.append(f"deleting content failed: {msg}")
        elif t == "NamespaceDeletionGroupVersionParsingFailure":
            out.append(f"group versions could not be parsed: {msg}")
        else:
            out.append(f"{t}: {msg}")
    return out


def unavailable_groups(message: str) -> list[str]:
    """``metrics.k8s.io/v1beta1`` from "...unable to retrieve the complete list of server APIs:
    metrics.k8s.io/v1beta1: the server is currently unable to handle the request"."""
    tail = message.split("server APIs:", 1)[-1] if "server APIs:" in message else message
    return sorted(set(re.findall(r"([a-z0-9][a-z0-9.-]*\.[a-z0-9.-]+/v[0-9]+[a-z0-9]*)\s*:", tail)))


def remaining_resources(message: str) -> list[tuple[str, int]]:
    """[("staticroutes.gateway.kusk.io", 1)] from "Some resources are remaining:
    staticroutes.gateway.kusk.io has 1 resource instances"."""
    return [(r, int(n)) for r, n in re.findall(r"([A-Za-z0-9.-]+) has (\d+) resource instances?", message)]


def remaining_finalizers(message: str) -> list[tuple[str, int]]:
    """[("example.com/protect", 2)] from "Some content in the namespace has finalizers remaining:
    example.com/protect in 2 resource instances"."""
    return [(f, int(n)) for f, n in re.findall(r"([A-Za-z0-9._/-]+) in (\d+) resource instances?", message)]


def terminating_namespaces(kube: Kube, *, list_objects: bool = True) -> list[Finding]:
    """Namespaces with a deletionTimestamp, each with what blocks it: its conditions, the objects
    still in it (every listable namespaced resource is listed) with their finalizers, and the API
    services that are not available."""
    nres = kube.resource("Namespace", "v1")
    stuck = [n for n in kube.list(nres) if (n.get("metadata") or {}).get("deletionTimestamp")]
    if not stuck:
        return []
    bad_apis = unavailable_apiservices(kube)
    findings = []
    for ns in sorted(stuck, key=lambda n: n["metadata"]["name"]):
        name = ns["metadata"]["name"]
        blockers = namespace_blockers(ns)
        remaining = namespace_objects(kube, name) if list_objects else []
        with_fin = [o for o in remaining if o["finalizers"]]
        for o in remaining:
            fin = f" finalizers {', '.join(o['finalizers'])}" if o["finalizers"] else " (no finalizers: being deleted)"
            blockers.append(f"{o['kind']} {o['name']}{fin}")
        for a in bad_apis:
            blockers.append(f"APIService {a['name']} unavailable ({a['reason']}: {a['message']})")
        since = (ns["metadata"] or {}).get("deletionTimestamp")
        fix = ("remove the finalizers of the remaining objects and finalize the namespace (90_troubleshoot "
               "with mode: apply, confirm: yes)")
        if bad_apis:
            fix += f"; better still restore or delete the unavailable APIService(s) {', '.join(a['name'] for a in bad_apis)}"
        if with_fin:
            ctrls = sorted({f for o in with_fin for f in o["finalizers"]})
            fix = (f"if the controller that owns {', '.join(ctrls)} is still installed, start it and it will finish; "
                   f"otherwise {fix}")
        findings.append(Finding(
            kind="namespace-terminating", object=f"Namespace {name}",
            problem=f"stuck in Terminating since {since}", fix=fix, blockers=blockers, fixable=True,
            data={"namespace": name, "remaining": remaining, "apiservices": bad_apis,
                  "finalizers": (ns.get("spec") or {}).get("finalizers") or []}))
    return findings


def namespace_objects(kube: Kube, namespace: str, *, workers: int = 8) -> list[dict]:
    """Every object left in a namespace: [{kind, apiVersion, name, finalizers, deleting, resource}],
    listed over all namespaced resources that support list (events skipped)."""
    resources = [r for r in kube.discovery.all() if r.namespaced and "list" in r.verbs and not r.stale
                 and r.plural not in ("events",) and not (r.group == "events.k8s.io")]

    def one(r: Resource) -> list[dict]:
        try:
            items = kube.list(r, namespace)
        except KubeError:
            return []
        return [{"kind": r.kind, "apiVersion": r.api_version, "resource": r, "name": o["metadata"]["name"],
                 "finalizers": list((o.get("metadata") or {}).get("finalizers") or []),
                 "deleting": bool((o.get("metadata") or {}).get("deletionTimestamp"))} for o in items]

    with ThreadPoolExecutor(max(1, workers)) as ex:
        out = [o for rs in ex.map(one, resources) for o in rs]
    return sorted(out, key=lambda o: (o["kind"], o["name"]))


def unavailable_apiservices(kube: Kube) -> list[dict]:
    """APIServices whose Available condition is not True (aggregated APIs without a backend)."""
    try:
        res = kube.resource("APIService", "apiregistration.k8s.io/v1")
        items = kube.list(res)
    except (KubeError, LookupError):
        return []
    out = []
    for a in items:
        c = {x.get("type"): x for x in (a.get("status") or {}).get("conditions") or []}.get("Available") or {}
        if c.get("status") != "True":
            svc = (a.get("spec") or {}).get("service") or {}
            out.append({"name": a["metadata"]["name"], "reason": c.get("reason", "Unknown"),
                        "message": c.get("message", ""),
                        "service": f"{svc.get('namespace')}/{svc.get('name')}" if svc else ""})
    return out


def finalize_namespace(kube: Kube, name: str, *, strip_object_finalizers: bool = True,
                       wait: float = 10.0) -> list[str]:
    """Make a Terminating namespace go away; returns what was done, one line per action.

    1. Remove the finalizers of objects left in it (merge patch ``metadata.finalizers: null``), so
       they are really deleted rather than orphaned in etcd.
    2. If the namespace is still there, PUT ``/api/v1/namespaces/{name}/finalize`` with
       ``spec.finalizers`` emptied (the namespace controller's own "content is gone" signal).
    3. Wait up to ``wait`` seconds for it to disappear.
    """
    done: list[str] = []
    nres = kube.resource("Namespace", "v1")
    if strip_object_finalizers:
        for o in namespace_objects(kube, name):
            r: Resource = o["resource"]
            try:
                if o["finalizers"]:
                    kube.request("PATCH", r.path(name, o["name"]), body={"metadata": {"finalizers": None}},
                                 content_type=MERGE_PATCH)
                    done.append(f"removed finalizers {', '.join(o['finalizers'])} from {o['kind']} {name}/{o['name']}")
                if not o["deleting"]:
                    # The namespace controller deletes content before finalizing; do the same so
                    # nothing is left behind in etcd.
                    kube.delete(r, o["name"], name)
                    done.append(f"deleted {o['kind']} {name}/{o['name']}")
            except KubeError as e:
                if not e.object_missing:
                    raise
    ns = _gone_within(kube, nres, name, 2.0)
    if ns is None:
        done.append(f"namespace {name} is gone")
        return done
    before = ", ".join((ns.get("spec") or {}).get("finalizers") or []) or "none"
    ns.setdefault("spec", {})["finalizers"] = []
    try:
        kube.request("PUT", nres.path(None, name, "finalize"), body=ns)
        done.append(f"finalized namespace {name}: PUT finalize with spec.finalizers emptied (was: {before})")
    except KubeError as e:
        if not e.object_missing:
            raise
    if _gone_within(kube, nres, name, wait) is None:
        done.append(f"namespace {name} is gone")
    else:
        done.append(f"namespace {name} still exists after {wait:g} s: check metadata.finalizers of the namespace")
    return done


def _gone_within(kube: Kube, nres: Resource, name: str, seconds: float) -> dict | None:
    """None once the namespace is gone (watched, up to ``seconds``), else its latest state."""
    from .wait import WaitTimeout, wait_for

    try:
        wait_for(kube, "Namespace", name, condition="Deleted", timeout=seconds, api_version="v1", progress=False)
        return None
    except WaitTimeout:
        return kube.get_or_none(nres.path(None, name))


# -- admission webhooks without a backend ------------------------------------------------------
WEBHOOK_KINDS = (("ValidatingWebhookConfiguration", "validating"), ("MutatingWebhookConfiguration", "mutating"))


def _service_backend(kube: Kube, ns: str, name: str, port: int, cache: dict) -> str:
    """'' when the service exists, has the port and a ready endpoint; else what is wrong."""
    key = (ns, name, port)
    if key in cache:
        return cache[key]
    svc = kube.get_or_none(kube.resource("Service", "v1").path(ns, name))
    why = ""
    if svc is None:
        why = f'service "{name}" in namespace {ns} does not exist'
    elif (svc.get("spec") or {}).get("type") == "ExternalName":
        why = ""
    else:
        ports = [p for p in (svc.get("spec") or {}).get("ports") or [] if p.get("port") == port]
        if not ports:
            why = f"service {ns}/{name} has no port {port}"
        else:
            try:
                eps = kube.list(kube.resource("EndpointSlice", "discovery.k8s.io/v1"), ns,
                                selector=f"kubernetes.io/service-name={name}")
            except (KubeError, LookupError):
                eps = []
            ready = [e for s in eps for e in s.get("endpoints") or []
                     if (e.get("conditions") or {}).get("ready") is not False]
            if not ready:
                why = f"service {ns}/{name} has no ready endpoints (no running pod behind it)"
    cache[key] = why
    return why


def stale_webhooks(kube: Kube) -> list[Finding]:
    """Admission webhooks (validating and mutating) whose service is missing, lacks the port, or
    has no ready endpoint in its EndpointSlices. URL webhooks cannot be checked this way and are
    left out."""
    findings: list[Finding] = []
    cache: dict = {}
    for kind, word in WEBHOOK_KINDS:
        res = kube.resource(kind, "admissionregistration.k8s.io/v1")
        for cfg in sorted(kube.list(res), key=lambda c: c["metadata"]["name"]):
            hooks = cfg.get("webhooks") or []
            stale = []
            for h in hooks:
                svc = (h.get("clientConfig") or {}).get("service")
                if not svc:
                    continue
                why = _service_backend(kube, svc.get("namespace", "default"), svc["name"], svc.get("port", 443), cache)
                if why:
                    stale.append({"name": h["name"], "why": why, "failurePolicy": h.get("failurePolicy", "Fail"),
                                  "rules": _rules(h)})
            if not stale:
                continue
            all_stale = len(stale) == len(hooks)
            blocks = [s for s in stale if s["failurePolicy"] == "Fail"]
            effect = (f"rejects {'; '.join(s['rules'] for s in blocks)} (failurePolicy: Fail)" if blocks
                      else "adds a timeout to matching requests (failurePolicy: Ignore)")
            fix = (f"start the webhook's backend, or delete the {'configuration' if all_stale else 'stale webhook entries'} "
                   f"(90_troubleshoot with mode: apply, confirm: yes; kubectl delete {kind.lower()} {cfg['metadata']['name']})")
            findings.append(Finding(
                kind="webhook-stale", object=f"{kind} {cfg['metadata']['name']}",
                problem=f"{word} webhook without a backend: {effect}",
                fix=fix, blockers=[f"{s['name']}: {s['why']}" for s in stale], fixable=True,
                data={"kind": kind, "name": cfg["metadata"]["name"], "stale": [s["name"] for s in stale],
                      "all_stale": all_stale, "resourceVersion": cfg["metadata"].get("resourceVersion")}))
    return findings


def _rules(h: dict) -> str:
    parts = []
    for r in h.get("rules") or []:
        groups = ",".join(g or "core" for g in r.get("apiGroups") or []) or "*"
        parts.append(f"{'/'.join(r.get('operations') or ['*'])} {','.join(r.get('resources') or ['*'])} ({groups})")
    return "; ".join(parts) or "all requests"


def remove_webhooks(kube: Kube, finding: Finding) -> str:
    """Delete a stale webhook configuration, or (when only some of its webhooks are stale) remove
    those entries with a JSON patch guarded by the resourceVersion it was found with."""
    d = finding.data
    res = kube.resource(d["kind"], "admissionregistration.k8s.io/v1")
    if d["all_stale"]:
        # Preconditioned on the resourceVersion it was found with: a configuration changed since
        # (its owner re-installed it) is not deleted blindly.
        try:
            kube.request("DELETE", res.path(None, d["name"]), body={
                "kind": "DeleteOptions", "apiVersion": "v1",
                "preconditions": {"resourceVersion": d.get("resourceVersion")} if d.get("resourceVersion") else None})
        except KubeError as e:
            if e.object_missing:
                return f"{d['kind']} {d['name']} was already gone"
            raise
        return f"deleted {d['kind']} {d['name']}"
    cfg = kube.get(res.path(None, d["name"]))
    keep = [h for h in cfg.get("webhooks") or [] if h["name"] not in d["stale"]]
    kube.request("PATCH", res.path(None, d["name"]), content_type=JSON_PATCH, body=[
        {"op": "test", "path": "/metadata/resourceVersion", "value": cfg["metadata"]["resourceVersion"]},
        {"op": "replace", "path": "/webhooks", "value": keep}])
    return f"removed webhooks {', '.join(d['stale'])} from {d['kind']} {d['name']}"


# -- pods that cannot pull their images ------------------------------------------------------
def image_pull_problems(pod: dict) -> list[dict]:
    """[{container, image, reason, message}] for containers waiting on an image pull."""
    out = []
    spec_images = {c["name"]: c.get("image", "") for c in ((pod.get("spec") or {}).get("containers") or [])
                   + ((pod.get("spec") or {}).get("initContainers") or [])}
    st = pod.get("status") or {}
    for cs in (st.get("initContainerStatuses") or []) + (st.get("containerStatuses") or []):
        w = (cs.get("state") or {}).get("waiting") or {}
        if w.get("reason") in IMAGE_PULL_REASONS:
            out.append({"container": cs.get("name"), "image": spec_images.get(cs.get("name")) or cs.get("image", ""),
                        "reason": w["reason"], "message": w.get("message", "")})
    return out


def image_pull_fix(message: str, image: str, reason: str = "") -> str:
    """The fix for one pull failure, by the waiting reason and what the runtime said."""
    m = (message or "").lower()
    base = f"pre-load {image} on the nodes or mirror it to the site registry (50_kubeflow image plan)"
    if reason == "InvalidImageName" or "invalid reference format" in m:
        return "the image reference is malformed: fix it in the manifest"
    if reason == "ErrImageNeverPull" or "never pull" in m:
        return f"imagePullPolicy is Never and the image is not on the node: {base}"
    if any(s in m for s in ("no such host", "i/o timeout", "dial tcp", "connection refused", "network is unreachable",
                            "tls handshake timeout", "context deadline exceeded")):
        return (f"the node cannot reach the registry (offline, firewall, DNS or proxy): {base}, and set "
                "imagePullPolicy: IfNotPresent")
    if "unauthorized" in m or "denied" in m or "authentication required" in m:
        return f"the registry refused the credentials: add an imagePullSecret, or {base}"
    if "not found" in m or "manifest unknown" in m or "does not exist" in m:
        return f"the tag does not exist in that registry: check the image name and tag, then {base}"
    return (f"the node cannot fetch the image (offline, firewall or slow registry): {base}, and set "
            "imagePullPolicy: IfNotPresent")


def image_pull_findings(pods: list[dict]) -> list[Finding]:
    out = []
    for p in pods:
        md = p.get("metadata") or {}
        for prob in image_pull_problems(p):
            out.append(Finding(
                kind="image-pull", object=f"Pod {md.get('namespace')}/{md.get('name')}",
                problem=f"{prob['reason']}: container {prob['container']} image {prob['image']}",
                fix=image_pull_fix(prob["message"], prob["image"], prob["reason"]),
                blockers=[prob["message"]] if prob["message"] else [],
                data={"image": prob["image"], "reason": prob["reason"], "container": prob["container"]}))
    return out


# -- Pending pods that want GPUs -------------------------------------------------------------
def gpu_request(pod: dict) -> int:
    """nvidia.com/gpu the pod asks for (limits, else requests; init containers' max counted)."""
    spec = pod.get("spec") or {}

    def ask(c):
        r = c.get("resources") or {}
        v = (r.get("limits") or {}).get(GPU) or (r.get("requests") or {}).get(GPU) or 0
        return int(v)

    main = sum(ask(c) for c in spec.get("containers") or [])
    init = max([ask(c) for c in spec.get("initContainers") or []] or [0])
    return max(main, init)


def scheduling_message(pod: dict, events: list[dict] | None = None) -> str:
    """The scheduler's reason: the PodScheduled=False condition's message, else the newest
    FailedScheduling event's message."""
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("message"):
            return c["message"]
    msgs = [e.get("message", "") for e in events or [] if e.get("reason") == "FailedScheduling"]
    return msgs[-1] if msgs else ""


def scheduling_fix(message: str, cluster_gpus: int | None = None) -> str:
    """The fix for an unschedulable GPU pod, by the scheduler's message."""
    m = message or ""
    if "Insufficient nvidia.com/gpu" in m:
        if cluster_gpus == 0:
            return ("no node advertises nvidia.com/gpu: the NVIDIA device plugin is not running or the driver/runtime "
                    "is missing (30_kubernetes device plugin, 20_gpu_runtime)")
        return ("not enough free nvidia.com/gpu: lower the request, wait for running GPU pods to finish, or add GPU "
                "nodes; if nodes should have more, check the device plugin (30_kubernetes) and driver (20_gpu_runtime)")
    if "untolerated taint" in m or "had taint" in m:
        return "the GPU nodes are tainted: add the matching toleration to the pod, or remove the taint"
    if "node affinity" in m or "node selector" in m or "didn't match Pod's node affinity" in m:
        return "no node matches the pod's nodeSelector/affinity: fix the labels (30_kubernetes node labels) or the selector"
    if "Insufficient cpu" in m or "Insufficient memory" in m:
        return "not enough CPU or memory on the GPU nodes: lower the requests or free the nodes"
    if "unbound immediate PersistentVolumeClaims" in m or "persistentvolumeclaim" in m.lower():
        return "a PersistentVolumeClaim is not bound: provide a StorageClass or a PersistentVolume"
    if not m:
        return "the scheduler has not said why yet (is kube-scheduler running?); look again in a minute"
    return "see the scheduler's message; fix the constraint it names"


def pending_gpu_findings(pods: list[dict], events: list[dict] | None = None,
                         cluster_gpus: int | None = None) -> list[Finding]:
    """Pending, unscheduled pods that ask for nvidia.com/gpu, with the scheduler's reason."""
    by_pod: dict[tuple[str, str], list[dict]] = {}
    for e in events or []:
        io = e.get("involvedObject") or e.get("regarding") or {}
        if io.get("kind") == "Pod":
            by_pod.setdefault((io.get("namespace"), io.get("name")), []).append(e)
    out = []
    for p in pods:
        md, st = p.get("metadata") or {}, p.get("status") or {}
        if st.get("phase") != "Pending" or (p.get("spec") or {}).get("nodeName"):
            continue
        n = gpu_request(p)
        if not n:
            continue
        msg = scheduling_message(p, by_pod.get((md.get("namespace"), md.get("name"))))
        out.append(Finding(
            kind="pending-gpu", object=f"Pod {md.get('namespace')}/{md.get('name')}",
            problem=f"Pending, wants {n} {GPU}" + (f": {msg}" if msg else ""),
            fix=scheduling_fix(msg, cluster_gpus), blockers=[msg] if msg else [],
            data={"gpus": n, "message": msg}))
    return out


# -- nodes -----------------------------------------------------------------------------------
def not_ready_findings(nodes: list[dict]) -> list[Finding]:
    """Nodes whose Ready condition is not True, with the kubelet's reason."""
    out = []
    for n in nodes:
        conds = {c.get("type"): c for c in (n.get("status") or {}).get("conditions") or []}
        ready = conds.get("Ready") or {}
        if ready.get("status") == "True":
            continue
        pressure = [t for t in ("MemoryPressure", "DiskPressure", "PIDPressure", "NetworkUnavailable")
                    if (conds.get(t) or {}).get("status") == "True"]
        msg = ready.get("message") or "no Ready condition (kubelet never reported)"
        fix = ("on that host: systemctl status kubelet containerd; journalctl -u kubelet -n 100; "
               "check the CNI (30_kubernetes) and the host's clock and certificates")
        if "cni" in msg.lower() or "network plugin" in msg.lower() or "NetworkUnavailable" in pressure:
            fix = "the pod network is not ready: check the CNI daemonset (flannel) in 30_kubernetes"
        elif pressure:
            fix = f"the node reports {', '.join(pressure)}: free disk/memory on the host, then the kubelet recovers"
        elif ready.get("reason") == "NodeStatusUnknown" or "stopped posting" in msg:
            fix = ("the kubelet stopped reporting: is the host up and the kubelet running (systemctl status kubelet)? "
                   "check it can reach the API server")
        out.append(Finding(
            kind="node-notready", object=f"Node {n['metadata']['name']}",
            problem=f"NotReady ({ready.get('reason', 'Unknown')}): {msg}", fix=fix,
            blockers=pressure, data={"reason": ready.get("reason", ""), "message": msg}))
    return out


# -- parsing pasted text ---------------------------------------------------------------------
_EVENT_LINE = re.compile(
    r"^\s*(?P<type>Normal|Warning)\s+(?P<reason>\S+)\s{2,}(?P<age>\S.*?)\s{2,}(?P<source>\S+)\s{2,}(?P<message>.*)$")


def parse_describe_events(text: str) -> list[dict]:
    """Rows of the Events table of ``kubectl describe`` (header optional):
    [{type, reason, age, source, message}]."""
    out = []
    for line in text.splitlines():
        m = _EVENT_LINE.match(line)
        if m:
            out.append({k: v.strip() for k, v in m.groupdict().items()})
    return out


def image_from_message(message: str) -> str:
    """The image named in a kubelet pull message (``Back-off pulling image "X"``, ``Failed to pull
    image "X"``, ``pulling image "X"``)."""
    m = re.search(r'(?:pull(?:ing)?|Pulling) image "([^"]+)"', message or "", re.IGNORECASE)
    return m.group(1) if m else ""


def parse_get_pods(text: str) -> list[dict]:
    """Rows of ``kubectl get pods`` (also ``-w``): [{name, ready, status, restarts, age}]."""
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 5 or parts[0] == "NAME" or "/" not in parts[1]:
            continue
        rows.append({"name": parts[0], "ready": parts[1], "status": parts[2], "restarts": parts[3], "age": parts[-1]})
    return rows


def parse_describe_conditions(text: str) -> list[dict]:
    """The Conditions table of ``kubectl describe ns`` as condition dicts (type, status,
    lastTransitionTime, reason, message), ready for :func:`namespace_blockers`."""
    out = []
    cols: list[tuple[str, int]] = []
    in_table = False
    names = {"Type": "type", "Status": "status", "LastTransitionTime": "lastTransitionTime",
             "Reason": "reason", "Message": "message"}
    for line in text.splitlines():
        if line.startswith("Conditions:"):
            in_table = True
            continue
        if not in_table:
            continue
        if not line.startswith(" ") or not line.strip():
            if out:
                break
            continue
        if line.strip().startswith("Type") and not cols:
            # Columns are aligned under the header: cut each row at the header's offsets.
            cols = [(names.get(m.group(0), m.group(0)), m.start()) for m in re.finditer(r"\S+", line)]
            continue
        if line.strip().startswith("----") or not cols:
            continue
        row = {}
        for i, (key, start) in enumerate(cols):
            end = cols[i + 1][1] if i + 1 < len(cols) else None
            row[key] = line[start:end].strip()
        if row.get("status") in ("True", "False", "Unknown"):
            out.append(row)
    return out


_WEBHOOK_ERR = re.compile(
    r'failed calling (?:admission )?webhook "(?P<webhook>[^"]+)": (?:failed to call webhook: )?'
    r'Post "?(?P<url>https://(?P<svc>[a-z0-9-]+)\.(?P<ns>[a-z0-9-]+)\.svc[^ "?]*)[^ "]*"?: (?P<error>.*)$')


def webhook_failure(message: str) -> dict:
    """Parse an admission webhook failure from an apply/create error: {webhook, service,
    namespace, cause, error}; cause is no-endpoints, service-missing, connection-refused,
    timeout, tls or other. Empty dict when the text is not a webhook failure."""
    for line in (message or "").splitlines() or [message or ""]:
        m = _WEBHOOK_ERR.search(line)
        if not m:
            continue
        err = m.group("error")
        low = err.lower()
        if "no endpoints available" in low:
            cause = "no-endpoints"
        elif re.search(r'service "[^"]+" not found', err):
            cause = "service-missing"
        elif "connection refused" in low:
            cause = "connection-refused"
        elif "timeout" in low or "deadline exceeded" in low or "timed out" in low:
            cause = "timeout"
        elif "x509" in low or "certificate" in low or "tls" in low:
            cause = "tls"
        else:
            cause = "other"
        return {"webhook": m.group("webhook"), "service": m.group("svc"), "namespace": m.group("ns"),
                "cause": cause, "error": err}
    return {}


def webhook_failure_fix(info: dict) -> str:
    """The fix for a parsed webhook failure."""
    if not info:
        return ""
    svc = f"{info['namespace']}/{info['service']}"
    return {
        "no-endpoints": f"no pod serves {svc}: start its deployment, or if it is a leftover, remove the webhook (90_troubleshoot)",
        "service-missing": f"service {svc} is gone: the webhook is stale; remove it (90_troubleshoot, confirm: yes)",
        "connection-refused": f"{svc} has a pod but nothing listens yet: wait for it to become Ready (apply retries), then re-apply",
        "timeout": f"{svc} does not answer in time: check its pod and the network between API server and pods (CNI)",
        "tls": f"{svc} presents a certificate the API server does not trust: check the webhook's caBundle",
    }.get(info["cause"], f"check the webhook's service {svc}")


def pod_from_describe(text: str) -> dict:
    """A partial Pod object from ``kubectl describe pod`` text: name, namespace, phase, node,
    containers with their nvidia.com/gpu limits/requests, conditions, and events (from the
    Events table, as core v1 events), so a pasted describe goes through the same finders."""
    md: dict = {}
    spec: dict = {"containers": []}
    st: dict = {"conditions": []}
    section = ""
    container: dict | None = None
    res_kind = ""
    for line in text.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        key, _, val = line.strip().partition(":")
        val = val.strip()
        if indent == 0:
            section = key
            container = None
            if key == "Name":
                md["name"] = val
            elif key == "Namespace":
                md["namespace"] = val
            elif key == "Status":
                st["phase"] = val
            elif key == "Node" and val not in ("<none>", ""):
                spec["nodeName"] = val.split("/", 1)[0]
            continue
        if section in ("Containers", "Init Containers"):
            if indent == 2 and line.rstrip().endswith(":"):
                container = {"name": key, "resources": {}}
                spec.setdefault("containers" if section == "Containers" else "initContainers", []).append(container)
                res_kind = ""
            elif container is not None and indent == 4 and key == "Image":
                container["image"] = val
            elif container is not None and indent == 4 and key in ("Limits", "Requests"):
                res_kind = key.lower()
                container["resources"].setdefault(res_kind, {})
            elif container is not None and indent == 6 and res_kind:
                container["resources"][res_kind][key] = val
            elif indent == 4:
                res_kind = ""
        elif section == "Conditions":
            parts = line.split()
            if len(parts) >= 2 and parts[0] != "Type" and parts[1] in ("True", "False", "Unknown"):
                st["conditions"].append({"type": parts[0], "status": parts[1]})
    events = [{"type": e["type"], "reason": e["reason"], "message": e["message"],
               "involvedObject": {"kind": "Pod", "name": md.get("name"), "namespace": md.get("namespace")}}
              for e in parse_describe_events(text)]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": md, "spec": spec, "status": st, "events": events}
