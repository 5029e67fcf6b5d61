"""Checks of a cluster whose nodes run real pods: container runtime, CoreDNS, DNS, Services.

Pure parts (objects, parsers, verdicts); phase 30's ``network`` step runs them:

- each node Ready with a ``containerd://`` runtime (``status.nodeInfo.containerRuntimeVersion``);
- CoreDNS's pods Ready, and a pod of ``kubernetes.net_check_image`` resolving
  ``kubernetes.default.svc.cluster.local`` to the first address of the service range;
- a ClusterIP Service in front of a busybox ``httpd`` pinned to one node, fetched with ``wget`` by
  a pod pinned to another node, by name and, when that fails, by ClusterIP (which tells a DNS
  fault from a kube-proxy or routing one).

Every object lives in one namespace with a unique suffix and the ``mlplat.io/smoke: net`` label,
deleted afterwards; pods use ``imagePullPolicy: IfNotPresent`` (air-gapped sites preload the image)
and tolerate every taint, so a pure control-plane node can serve as one end.
"""

from __future__ import annotations

import ipaddress
import re

from ..kube.diagnose import image_pull_problems
from ..params.schema import Params
from ..report import StepResult, failed
from .nodes import SMOKE_LABEL, _ready

NS_PREFIX = "mlplat-netcheck"
LABEL_VALUE = "net"
HTTP_PORT = 8080
SERVICE_PORT = 80
CLUSTER_DOMAIN = "cluster.local"
KUBERNETES_FQDN = f"kubernetes.default.svc.{CLUSTER_DOMAIN}"
RUNTIME_PREFIX = "containerd://"
COREDNS_SELECTOR = "k8s-app=kube-dns"


def kubernetes_service_ip(params: Params) -> str:
    """The ClusterIP of the ``kubernetes`` Service: the first address of the service range."""
    return str(next(ipaddress.ip_network(params.kubernetes.service_cidr).hosts()))


# -- nodes --------------------------------------------------------------------------------------

def runtime_rows(node_list: list[dict], params: Params, step: str = "verify | node runtime") -> list[StepResult]:
    """One row per params host: its node Ready, its container runtime containerd (shown)."""
    by_name = {(n.get("metadata") or {}).get("name"): n for n in node_list}
    out = []
    for h in params.hosts:
        n = by_name.get(h.name)
        if n is None:
            out.append(failed(h.name, step, f"node {h.name} is not in the cluster: did kubeadm join run on it?"))
            continue
        info = (n.get("status") or {}).get("nodeInfo") or {}
        runtime, kubelet = info.get("containerRuntimeVersion", ""), info.get("kubeletVersion", "")
        ready, why = _ready(n)
        data = {"ready": ready, "runtime": runtime, "kubelet": kubelet}
        problems = [] if ready else [why]
        if not runtime.startswith(RUNTIME_PREFIX):
            problems.append(f"container runtime is {runtime or 'not reported'}, not containerd ({RUNTIME_PREFIX}...)")
        if problems:
            out.append(failed(h.name, step, "; ".join(problems) + f" (kubelet {kubelet or '?'})", data=data))
        else:
            out.append(StepResult(host=h.name, step=step, data=data, message=f"Ready; {runtime}; kubelet {kubelet}"))
    return out


def pick_nodes(node_list: list[dict], params: Params) -> tuple[str | None, str | None]:
    """Two Ready nodes of the params' hosts, in params order (server, client); the second is None
    on a single-node cluster; both None when no node is Ready."""
    by_name = {(n.get("metadata") or {}).get("name"): n for n in node_list}
    ready = [h.name for h in params.hosts if h.name in by_name and _ready(by_name[h.name])[0]]
    return (ready[0] if ready else None), (ready[1] if len(ready) > 1 else None)


# -- CoreDNS ------------------------------------------------------------------------------------

def coredns_row(pods: list[dict], host: str, step: str = "verify | CoreDNS") -> StepResult:
    """CoreDNS's pods (``k8s-app=kube-dns`` in kube-system): every one Ready, and on which nodes."""
    if not pods:
        return failed(host, step, "CoreDNS not ready: no pod labelled k8s-app=kube-dns in kube-system "
                                  "(was kubeadm's addon/coredns phase skipped?)")
    ready = [p for p in pods if _pod_ready(p)]
    where = ", ".join(sorted({(p.get("spec") or {}).get("nodeName") or "unscheduled" for p in pods}))
    if len(ready) < len(pods):
        why = "; ".join(pod_why(p) for p in pods if not _pod_ready(p))
        return failed(host, step, f"CoreDNS not ready: {len(ready)}/{len(pods)} pods Ready ({why})")
    return StepResult(host=host, step=step, message=f"{len(ready)}/{len(pods)} CoreDNS pods Ready (on {where})",
                      data={"ready": len(ready), "pods": len(pods)})


def _pod_ready(pod: dict) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def pod_why(pod: dict) -> str:
    """A pod's state in one line: phase, failing conditions, waiting and terminated reasons."""
    st = pod.get("status") or {}
    bits = [f"{(pod.get('metadata') or {}).get('name', '?')} {st.get('phase', '?')}"]
    for c in st.get("conditions") or []:
        if c.get("status") != "True" and c.get("message"):
            bits.append(c["message"])
    for cs in (st.get("initContainerStatuses") or []) + (st.get("containerStatuses") or []):
        state = cs.get("state") or {}
        w, t = state.get("waiting") or {}, state.get("terminated") or {}
        if w.get("reason"):
            bits.append(f"{w['reason']}: {w.get('message', '')}".rstrip(": "))
        if t.get("reason") and t.get("exitCode"):
            bits.append(f"{t['reason']} (exit {t['exitCode']})")
    return " ".join(bits)


def image_problem(pod: dict) -> str | None:
    """The waiting reason when the pod's image cannot be had (pull failed, or not preloaded)."""
    for x in image_pull_problems(pod):
        return f"{x['reason']}: {x['message']}".rstrip(": ")
    return None


# -- objects ------------------------------------------------------------------------------------

def _labels(app: str) -> dict:
    return {SMOKE_LABEL: LABEL_VALUE, "app.kubernetes.io/name": app}


def namespace(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {SMOKE_LABEL: LABEL_VALUE}}}


def _pod(name: str, ns: str, image: str, node: str, app: str, command: list[str], restart: str, **container) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": _labels(app),
                     "annotations": {"sidecar.istio.io/inject": "false"}},
        "spec": {
            "restartPolicy": restart,
            # By node name (what DaemonSets use), not the hostname label, which may differ from it.
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]}}},
            "tolerations": [{"operator": "Exists"}],
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": app, "image": image, "imagePullPolicy": "IfNotPresent", "command": command,
                            **container}]}}


def dns_pod(name: str, ns: str, image: str, node: str, want_ip: str, tries: int = 10) -> dict:
    """Looks up the ``kubernetes`` Service until the answer holds ``want_ip`` (exit 0) or gives up."""
    # The address as a whole word: the resolver's own line (10.96.0.10) must not pass for 10.96.0.1.
    word = "(^|[^0-9.])" + want_ip.replace(".", "\\.") + "([^0-9.]|$)"
    script = (f"for i in $(seq 1 {tries}); do out=$(nslookup {KUBERNETES_FQDN} 2>&1); echo \"$out\"; "
              f"echo \"$out\" | grep -qE '{word}' && exit 0; sleep 3; done; exit 1")
    return _pod(name, ns, image, node, "dns", ["sh", "-c", script], "Never")


def server_pod(name: str, ns: str, image: str, node: str, token: str) -> dict:
    """busybox httpd on :8080 serving ``token``; Ready once it listens."""
    script = f"mkdir -p /www && echo {token} > /www/index.html && exec httpd -f -p {HTTP_PORT} -h /www"
    return _pod(name, ns, image, node, "server", ["sh", "-c", script], "Always",
                ports=[{"containerPort": HTTP_PORT, "name": "http"}],
                readinessProbe={"tcpSocket": {"port": HTTP_PORT}, "periodSeconds": 2})


def service(name: str, ns: str) -> dict:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns, "labels": {SMOKE_LABEL: LABEL_VALUE}},
            "spec": {"type": "ClusterIP", "selector": _labels("server"),
                     "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": HTTP_PORT}]}}


def service_fqdn(name: str, ns: str) -> str:
    return f"{name}.{ns}.svc.{CLUSTER_DOMAIN}"


def client_pod(name: str, ns: str, image: str, node: str, svc_name: str, cluster_ip: str, tries: int = 15) -> dict:
    """Fetches the Service by name until it answers; if it never does, tries its ClusterIP once."""
    url = f"http://{service_fqdn(svc_name, ns)}:{SERVICE_PORT}/"
    # `timeout 5 wget`, not `wget -T 5`: Debian's busybox 1.35 wget crashes on -T.
    script = (f"for i in $(seq 1 {tries}); do if out=$(timeout 5 wget -qO- {url} 2>&1); then echo \"name-ok $out\"; "
              f"exit 0; fi; sleep 2; done; echo \"name-failed: $out\"; "
              f"if out=$(timeout 5 wget -qO- http://{cluster_ip}:{SERVICE_PORT}/ 2>&1); then echo \"ip-ok $out\"; "
              f"else echo \"ip-failed: $out\"; fi; exit 1")
    return _pod(name, ns, image, node, "client", ["sh", "-c", script], "Never")


# -- verdicts from the pods' logs -----------------------------------------------------------------

def dns_verdict(log: str, succeeded: bool, want_ip: str) -> tuple[bool, str]:
    """(ok, detail) of the lookup pod's log."""
    answered = re.search(rf"(^|[^0-9.]){re.escape(want_ip)}([^0-9.]|$)", log or "", re.M) is not None
    tail = " | ".join(ln.strip() for ln in (log or "").strip().splitlines()[-3:] if ln.strip())
    if succeeded and answered:
        return True, f"{KUBERNETES_FQDN} -> {want_ip}"
    if answered:
        return False, f"DNS lookup of {KUBERNETES_FQDN} answered {want_ip} but the pod failed ({tail})"
    return False, f"DNS lookup of {KUBERNETES_FQDN} failed: no answer with {want_ip} ({tail or 'no output'})"


def service_verdict(log: str, token: str) -> tuple[bool, str]:
    """(ok, detail) of the client pod's log: reached by name; or the name failed and the
    ClusterIP did (DNS fault) or did not (kube-proxy / routing fault) answer."""
    lines = (log or "").splitlines()
    for ln in lines:
        if ln.startswith("name-ok"):
            return (token in ln), ("answered with the server's page" if token in ln
                                   else f"answered, but not with the server's page: {ln[8:80]!r}")
    ip = next((ln for ln in lines if ln.startswith("ip-")), "")
    name = next((ln for ln in lines if ln.startswith("name-failed")), "")
    name_why = name.partition(":")[2].strip() or "no detail"
    if ip.startswith("ip-ok") and token in ip:
        return False, f"Service name did not resolve or answer ({name_why}), its ClusterIP did: a DNS fault"
    ip_why = ip.partition(":")[2].strip() if ip.startswith("ip-failed") else "ClusterIP not tried"
    return False, (f"Service not reachable by name or ClusterIP ({name_why}; {ip_why or 'no detail'}): "
                   "a kube-proxy or pod-routing fault")
