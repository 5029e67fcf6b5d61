"""kubeadm: the config rendered from the params, validated, and the init/join plans.

The config is up to five kinds of document in one file: ``InitConfiguration`` (the first
control-plane host), ``ClusterConfiguration`` (version, CIDRs, endpoint, image repository),
``KubeletConfiguration`` (cgroup driver, ``kubernetes.kubelet_config`` deep-merged),
``KubeProxyConfiguration`` (only when ``kubernetes.kube_proxy_config`` is set) and, per joining
host, ``JoinConfiguration``.

``kubernetes.allow_cgroup_v1`` is for hosts still on cgroup v1 (the lab, older distributions): the
kubelet from 1.35 refuses to start on cgroup v1 unless ``failCgroupV1: false`` (the field exists
from 1.31), and kubeadm's ``SystemVerification`` preflight check fails on cgroup v1 from 1.35 (a
warning on 1.34; kubernetes/system-validators#59), so that one check is ignored on init and join.
The kubeadm API version follows the Kubernetes minor (:func:`mlplat.params.versions.kubeadm_api_versions`):
``kubeadm.k8s.io/v1beta4`` from 1.31, ``v1beta3`` for 1.22-1.30 (and accepted, deprecated, up to 1.36).

:func:`validate_config` refuses what kubeadm would refuse later, with a message that says what to
write instead. The precise meaning of "v1beta3-only fields on 1.34": Kubernetes 1.34 gets a
v1beta4 config; a field or shape that v1beta4 dropped or changed is refused with its v1beta4
replacement named: ``apiServer.timeoutForControlPlane`` (now ``timeouts.controlPlaneComponentHealthCheck``),
``discovery.timeout`` (now ``timeouts.discovery``), and ``extraArgs`` / ``kubeletExtraArgs`` written
as a mapping (v1beta4 takes a list of ``{name, value}``). Such fields typically come from a 2021-era
snippet pasted into the extra config (the 30_kubernetes ``kubeadm_extra`` parameter). The reverse
(v1beta4-only fields in a v1beta3 config) is refused too, and so is an API version the Kubernetes
minor does not accept. Overlapping pod/service CIDRs, host addresses inside them, a service range
too large for the API server and a pod range too small for one node are refused as well.

Plans are data (:class:`HostStep`: a read-only probe, files, commands); the phase runs them over a
HostPool (:mod:`.remote`) and the golden tests compare their text (:func:`plan_text`).
"""

from __future__ import annotations

import copy
import ipaddress
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from ..params.schema import ROLE_CONTROL_PLANE, ROLE_WORKER, Host, Params
from ..params.versions import PAUSE_IMAGE, fmt, kubeadm_api_versions, minor

V1BETA3 = "kubeadm.k8s.io/v1beta3"
V1BETA4 = "kubeadm.k8s.io/v1beta4"
KUBELET_API = "kubelet.config.k8s.io/v1beta1"
KUBE_PROXY_API = "kubeproxy.config.k8s.io/v1alpha1"
# The preflight check that fails on cgroup v1 from kubeadm 1.35 (a warning on 1.34).
CGROUP_V1_PREFLIGHT = "SystemVerification"
# The kubelet's failCgroupV1 field exists from 1.31 (an unknown field before).
FAIL_CGROUP_V1_SINCE = (1, 31)
KUBEADM_KINDS = ("InitConfiguration", "ClusterConfiguration", "JoinConfiguration", "ResetConfiguration",
                 "UpgradeConfiguration")

CONFIG_DIR = "/etc/mlplat"
INIT_CONFIG = f"{CONFIG_DIR}/kubeadm-init.yaml"
JOIN_CONFIG = f"{CONFIG_DIR}/kubeadm-join.yaml"
ADMIN_CONF = "/etc/kubernetes/admin.conf"
KUBELET_CONF = "/etc/kubernetes/kubelet.conf"
ETCD_MANIFEST = "/etc/kubernetes/manifests/etcd.yaml"
CRI_SOCKET = "unix:///run/containerd/containerd.sock"
API_PORT = 6443
DEFAULT_REGISTRY = "registry.k8s.io"
TOKEN_TTL = "1h0m0s"
# The kube-controller-manager's default --node-cidr-mask-size for IPv4: each node gets a /24.
NODE_CIDR_MASK = 24

_TOKEN_RX = re.compile(r"^[a-z0-9]{6}\.[a-z0-9]{16}$")
_HASH_RX = re.compile(r"^sha256:[a-f0-9]{64}$")
_CERT_KEY_RX = re.compile(r"^[a-f0-9]{64}$")


# ---------------------------------------------------------------------------------------------
# Problems
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ConfigProblem:
    """One problem of a kubeadm config: where (document and field), what, and the fix."""

    where: str
    message: str
    fix: str
    severity: str = "error"  # error | warning

    def __str__(self) -> str:
        return f"{self.where}: {self.message}; fix: {self.fix}"


class KubeadmConfigError(ValueError):
    """The rendered config is refused; ``problems`` lists every error at once."""

    def __init__(self, problems: list[ConfigProblem]):
        self.problems = problems
        super().__init__("kubeadm config refused:\n  " + "\n  ".join(str(p) for p in problems))


class JoinParseError(ValueError):
    """The text holds no usable ``kubeadm join`` command; the message says what is missing."""


# ---------------------------------------------------------------------------------------------
# Small facts from the params
# ---------------------------------------------------------------------------------------------

def api_version_for(kubernetes: str, requested: str | None = None) -> str:
    """The kubeadm API version to render for a Kubernetes version: ``requested`` when given (it is
    checked by :func:`validate_config`), else the newest one that minor accepts."""
    if requested:
        return requested if "/" in requested else f"kubeadm.k8s.io/{requested}"
    accepted = kubeadm_api_versions(minor(kubernetes))
    if not accepted:
        raise KubeadmConfigError([ConfigProblem(
            "versions.kubernetes", f"no kubeadm config API is known for Kubernetes {kubernetes}",
            "use Kubernetes 1.22 or later (1.31+ for kubeadm v1beta4)")])
    return accepted[0]


def control_planes(params: Params) -> list[Host]:
    return [h for h in params.hosts if ROLE_CONTROL_PLANE in h.roles]


def first_control_plane(params: Params) -> Host:
    cps = control_planes(params)
    if not cps:
        raise KubeadmConfigError([ConfigProblem("hosts", "no host has the control-plane role",
                                                "add 'control-plane' to the roles of the first host")])
    return cps[0]


def joining_hosts(params: Params) -> list[Host]:
    """Every host but the first control plane, in params order (control planes first)."""
    first = first_control_plane(params)
    rest = [h for h in params.hosts if h.name != first.name]
    return [h for h in rest if ROLE_CONTROL_PLANE in h.roles] + [h for h in rest if ROLE_CONTROL_PLANE not in h.roles]


def node_ip(host: Host) -> str | None:
    """The address the node announces: its static address (phase 10) or its SSH address, if an IP."""
    for cand in (host.static_address.split("/")[0] if host.static_address else None, host.address):
        if cand:
            try:
                ipaddress.ip_address(cand)
                return cand
            except ValueError:
                continue
    return None


def control_plane_endpoint(params: Params) -> str:
    """``kubernetes.control_plane_endpoint``, else the first control plane's address and port 6443."""
    ep = params.kubernetes.control_plane_endpoint
    if ep:
        return ep if re.search(r":\d+$", ep) else f"{ep}:{API_PORT}"
    cp = first_control_plane(params)
    return f"{node_ip(cp) or cp.address}:{API_PORT}"


def cluster_name(params: Params) -> str:
    """The site name as a DNS-1123 label (kubeadm's clusterName ends up in kubeconfigs)."""
    name = re.sub(r"[^a-z0-9-]+", "-", params.site.lower()).strip("-")
    return name[:63] or "kubernetes"


def kubernetes_version(params: Params) -> str:
    return "v" + params.versions.kubernetes.lstrip("vV")


def sandbox_image(params: Params) -> str:
    """The pause image kubeadm expects for this minor; containerd's sandbox image must equal it
    (phase 20 sets it), else kubeadm's preflight warns and pods use a different pause image."""
    m = minor(params.versions.kubernetes)
    repo = params.kubernetes.image_repository or DEFAULT_REGISTRY
    tag = PAUSE_IMAGE.get(m)
    return f"{repo}/pause:{tag}" if tag else f"{repo}/pause (unknown tag for Kubernetes {fmt(m)})"


def _args(api_version: str, args: dict[str, str]) -> Any:
    """extraArgs in the shape of the API version: v1beta4 a list of {name, value}, v1beta3 a map."""
    if api_version == V1BETA3:
        return dict(args)
    return [{"name": k, "value": v} for k, v in args.items()]


def _node_registration(api_version: str, host: Host, params: Params) -> dict:
    reg: dict[str, Any] = {"name": host.name, "criSocket": CRI_SOCKET, "imagePullPolicy": "IfNotPresent"}
    ip = node_ip(host)
    if ip:
        reg["kubeletExtraArgs"] = _args(api_version, {"node-ip": ip})
    if ROLE_CONTROL_PLANE in host.roles:
        # A control-plane host that is also a worker (GPU servers are too valuable to idle) gets no
        # NoSchedule taint; a pure control plane keeps kubeadm's default taint.
        if ROLE_WORKER in host.roles:
            reg["taints"] = []
    if params.kubernetes.allow_cgroup_v1:
        reg["ignorePreflightErrors"] = [CGROUP_V1_PREFLIGHT]
    return reg


def render_kubelet(params: Params) -> dict:
    """The KubeletConfiguration: the cgroup driver, ``failCgroupV1: false`` with
    ``allow_cgroup_v1``, then ``kubernetes.kubelet_config`` deep-merged over it."""
    k = params.kubernetes
    doc: dict[str, Any] = {"apiVersion": KUBELET_API, "kind": "KubeletConfiguration", "cgroupDriver": k.cgroup_driver}
    if k.allow_cgroup_v1 and minor(params.versions.kubernetes) >= FAIL_CGROUP_V1_SINCE:
        doc["failCgroupV1"] = False
    _deep_merge(doc, k.kubelet_config)
    return doc


def render_kube_proxy(params: Params) -> dict | None:
    """The KubeProxyConfiguration from ``kubernetes.kube_proxy_config``; None when that is empty."""
    if not params.kubernetes.kube_proxy_config:
        return None
    doc: dict[str, Any] = {"apiVersion": KUBE_PROXY_API, "kind": "KubeProxyConfiguration"}
    _deep_merge(doc, params.kubernetes.kube_proxy_config)
    return doc


def cgroup_v1_note(params: Params) -> str:
    """What ``allow_cgroup_v1`` changes in the config, and why (the config step shows it)."""
    m = minor(params.versions.kubernetes)
    fail = ("failCgroupV1: false in the KubeletConfiguration (the kubelet refuses cgroup v1 from 1.35 "
            "without it)" if m >= FAIL_CGROUP_V1_SINCE else
            f"no failCgroupV1 (the field exists from {fmt(FAIL_CGROUP_V1_SINCE)}; Kubernetes {fmt(m)} runs on cgroup v1)")
    return (f"cgroup v1 allowed (kubernetes.allow_cgroup_v1): {fail}; kubeadm preflight check "
            f"{CGROUP_V1_PREFLIGHT} ignored on init and join (it fails on cgroup v1 from kubeadm 1.35 and "
            "warns on 1.34; kubernetes/system-validators#59). Its kernel-config checks are skipped with it")


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------

def render_init(params: Params, api_version: str | None = None) -> list[dict]:
    """InitConfiguration + ClusterConfiguration + KubeletConfiguration for the first control plane."""
    av = api_version_for(params.versions.kubernetes, api_version)
    k = params.kubernetes
    cp = first_control_plane(params)
    init: dict[str, Any] = {"apiVersion": av, "kind": "InitConfiguration"}
    ip = node_ip(cp)
    init["localAPIEndpoint"] = {**({"advertiseAddress": ip} if ip else {}), "bindPort": API_PORT}
    init["nodeRegistration"] = _node_registration(av, cp, params)
    # init makes a bootstrap token whatever it is told; by default it lives 24 h. Nothing uses it
    # (the joins get their own, deleted afterwards), so it expires as soon as theirs would.
    init["bootstrapTokens"] = [{"description": "kubeadm init's token (mlplat joins with its own)", "ttl": TOKEN_TTL}]
    endpoint = control_plane_endpoint(params)
    cluster: dict[str, Any] = {
        "apiVersion": av, "kind": "ClusterConfiguration",
        "kubernetesVersion": kubernetes_version(params),
        "clusterName": cluster_name(params),
        "controlPlaneEndpoint": endpoint,
        "networking": {"podSubnet": k.pod_cidr, "serviceSubnet": k.service_cidr, "dnsDomain": "cluster.local"},
    }
    sans = []
    for h in control_planes(params):
        for a in (h.address, node_ip(h)):
            if a and a not in sans:
                sans.append(a)
    ep_host = endpoint.rsplit(":", 1)[0]
    if ep_host not in sans:
        sans.insert(0, ep_host)
    cluster["apiServer"] = {"certSANs": sans}
    if k.image_repository:
        cluster["imageRepository"] = k.image_repository
    docs = [init, cluster, render_kubelet(params)]
    proxy = render_kube_proxy(params)
    if proxy:
        docs.append(proxy)
    return docs


@dataclass
class JoinInfo:
    """What ``kubeadm join`` needs: endpoint, bootstrap token, CA hash(es); control-plane joins
    also a certificate key. ``placeholder`` marks plan-mode stand-ins (no token exists yet)."""

    endpoint: str
    token: str
    ca_cert_hashes: list[str]
    control_plane: bool = False
    certificate_key: str | None = None
    placeholder: bool = False

    @property
    def token_id(self) -> str:
        return self.token.split(".", 1)[0]

    def command(self, mask: bool = True) -> str:
        """The join command line (token and certificate key masked unless ``mask`` is False)."""
        tok = (self.token_id + ".****************") if mask and not self.placeholder else self.token
        parts = ["kubeadm", "join", self.endpoint, "--token", tok]
        for h in self.ca_cert_hashes:
            parts += ["--discovery-token-ca-cert-hash", h]
        if self.control_plane:
            parts.append("--control-plane")
        if self.certificate_key:
            parts += ["--certificate-key", "****" if mask and not self.placeholder else self.certificate_key]
        return " ".join(parts)

    @classmethod
    def plan_placeholder(cls, params: Params) -> "JoinInfo":
        return cls(control_plane_endpoint(params), "<token: kubeadm token create>",
                   ["<ca-cert-hash: printed with the token>"], placeholder=True)


def render_join(params: Params, host: Host, join: JoinInfo, api_version: str | None = None,
                certificate_key: str | None = None) -> list[dict]:
    """JoinConfiguration for one joining host. A control-plane host gets
    ``controlPlane`` with its own advertise address and the certificate key."""
    av = api_version_for(params.versions.kubernetes, api_version)
    doc: dict[str, Any] = {
        "apiVersion": av, "kind": "JoinConfiguration",
        "discovery": {"bootstrapToken": {"apiServerEndpoint": join.endpoint, "token": join.token,
                                         "caCertHashes": list(join.ca_cert_hashes)}},
        "nodeRegistration": _node_registration(av, host, params),
    }
    if ROLE_CONTROL_PLANE in host.roles:
        ip = node_ip(host)
        cp: dict[str, Any] = {"localAPIEndpoint": {**({"advertiseAddress": ip} if ip else {}), "bindPort": API_PORT}}
        key = certificate_key or join.certificate_key
        if key:
            cp["certificateKey"] = key
        doc["controlPlane"] = cp
    # No KubeletConfiguration here: kubeadm join ignores it (the kubelet config comes from the
    # cluster's kubelet-config ConfigMap, written by init).
    return [doc]


def merge_extra(docs: list[dict], extra: Iterable[dict]) -> list[dict]:
    """Deep-merge extra documents into the rendered ones, matched by ``kind`` (the extra document's
    own apiVersion is ignored: the rendered version stays, so its fields are checked against it).
    Extra kinds not rendered are appended as they are."""
    out = copy.deepcopy(docs)
    for e in extra or []:
        if not isinstance(e, dict) or not e.get("kind"):
            continue
        target = next((d for d in out if d.get("kind") == e["kind"]), None)
        if target is None:
            out.append(copy.deepcopy(e))
            continue
        body = {k: v for k, v in e.items() if k not in ("apiVersion", "kind")}
        _deep_merge(target, body)
    return out


def _deep_merge(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_merge(dst[k], v)
        else:
            dst[k] = copy.deepcopy(v)


def load_extra(path: str | Path) -> list[dict]:
    """Documents of an extra kubeadm config file (YAML, several documents)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"kubeadm extra config {p} does not exist")
    return [d for d in yaml.safe_load_all(p.read_text()) if d]


class _Dumper(yaml.SafeDumper):
    pass


def dump_docs(docs: list[dict]) -> str:
    """The documents as one YAML file, in the order given, keys in rendering order."""
    return "---\n".join(yaml.dump(d, Dumper=_Dumper, sort_keys=False, default_flow_style=False) for d in docs)


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------

# Fields v1beta4 removed, with what replaced them [versions.md 3; kubeadm v1beta4 doc.go].
V1BETA3_ONLY_FIELDS = {
    ("ClusterConfiguration", "apiServer.timeoutForControlPlane"):
        "InitConfiguration/JoinConfiguration timeouts.controlPlaneComponentHealthCheck",
    ("JoinConfiguration", "discovery.timeout"): "JoinConfiguration timeouts.discovery",
}
# Fields that exist only from v1beta4 on.
V1BETA4_ONLY_FIELDS = {
    ("InitConfiguration", "timeouts"), ("JoinConfiguration", "timeouts"), ("InitConfiguration", "dryRun"),
    ("JoinConfiguration", "dryRun"), ("ClusterConfiguration", "encryptionAlgorithm"),
    ("ClusterConfiguration", "certificateValidityPeriod"), ("ClusterConfiguration", "caCertificateValidityPeriod"),
    ("InitConfiguration", "nodeRegistration.imagePullSerial"), ("JoinConfiguration", "nodeRegistration.imagePullSerial"),
}
# extraArgs-like fields: a mapping in v1beta3, a list of {name, value} in v1beta4.
ARG_FIELDS = {
    "ClusterConfiguration": ("apiServer.extraArgs", "controllerManager.extraArgs", "scheduler.extraArgs",
                             "etcd.local.extraArgs"),
    "InitConfiguration": ("nodeRegistration.kubeletExtraArgs",),
    "JoinConfiguration": ("nodeRegistration.kubeletExtraArgs",),
}


def _get(d: dict, path: str) -> Any:
    cur: Any = d
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return _MISSING
        cur = cur[part]
    return cur


_MISSING = object()


def _as_list_example(value: dict) -> str:
    items = list(value.items())[:2]
    return "[" + ", ".join(f"{{name: {k}, value: {shlex.quote(str(v))}}}" for k, v in items) + "]"


def validate_config(docs: list[dict], kubernetes: str, hosts: Iterable[Host] = (),
                    control_plane_count: int | None = None) -> list[ConfigProblem]:
    """Every problem of a kubeadm config for Kubernetes ``kubernetes`` (errors and warnings).

    ``hosts`` (the params' hosts) adds the checks that need them: host addresses outside the pod
    and service ranges, an endpoint for several control planes, enough /24 node ranges.
    """
    problems: list[ConfigProblem] = []
    m = minor(kubernetes)
    accepted = kubeadm_api_versions(m)
    hosts = list(hosts)
    kinds = [d.get("kind") for d in docs]
    for kind in ("InitConfiguration", "ClusterConfiguration"):
        if kind not in kinds and "JoinConfiguration" not in kinds:
            problems.append(ConfigProblem(kind, "missing", "render it with mlplat.cluster.kubeadm.render_init"))
    for d in docs:
        kind = d.get("kind", "?")
        av = d.get("apiVersion", "")
        where = f"{kind} ({av or 'no apiVersion'})"
        if kind not in KUBEADM_KINDS:
            if kind not in ("KubeletConfiguration", "KubeProxyConfiguration"):
                problems.append(ConfigProblem(where, f"unknown kind {kind!r} in a kubeadm config",
                                              "use Init/Cluster/Join/Reset/UpgradeConfiguration, "
                                              "KubeletConfiguration or KubeProxyConfiguration"))
            continue
        if av not in (V1BETA3, V1BETA4, "kubeadm.k8s.io/v1beta2", "kubeadm.k8s.io/v1beta1"):
            problems.append(ConfigProblem(where, f"unknown apiVersion {av!r}", f"use {accepted[0] if accepted else V1BETA4}"))
            continue
        if av not in accepted:
            problems.append(ConfigProblem(
                where, f"kubeadm {fmt(m)} does not accept {av}" + (
                    f" (it accepts {', '.join(accepted)})" if accepted else ""),
                f"render with {accepted[0]}" if accepted else "use a supported Kubernetes version"))
            continue
        if av == V1BETA3 and V1BETA4 in accepted:
            problems.append(ConfigProblem(where, f"{V1BETA3} is deprecated on Kubernetes {fmt(m)} and goes away "
                                          "with the kubeadm v1 API", f"use {V1BETA4} (the default rendering)",
                                          severity="warning"))
        if kind in ("ResetConfiguration", "UpgradeConfiguration") and av == V1BETA3:
            problems.append(ConfigProblem(where, f"{kind} exists from {V1BETA4} on", f"use {V1BETA4}"))
        if av == V1BETA4:
            for (k, path), repl in V1BETA3_ONLY_FIELDS.items():
                if k == kind and _get(d, path) is not _MISSING:
                    problems.append(ConfigProblem(
                        f"{kind} {path}", f"a {V1BETA3}-only field: {V1BETA4} (Kubernetes {fmt(m)}) removed it",
                        f"use {repl}"))
            for path in ARG_FIELDS.get(kind, ()):
                v = _get(d, path)
                if isinstance(v, dict):
                    problems.append(ConfigProblem(
                        f"{kind} {path}", f"written as a mapping ({V1BETA3} shape); {V1BETA4} takes a list of "
                        "{name, value}", f"write {path.rsplit('.', 1)[1]}: {_as_list_example(v)}"))
        elif av == V1BETA3:
            for (k, path) in V1BETA4_ONLY_FIELDS:
                if k == kind and _get(d, path) is not _MISSING:
                    problems.append(ConfigProblem(f"{kind} {path}", f"a {V1BETA4}-only field in a {V1BETA3} config",
                                                  f"remove it, or use {V1BETA4} (Kubernetes 1.31+)"))
            for path in ARG_FIELDS.get(kind, ()):
                v = _get(d, path)
                if isinstance(v, list):
                    problems.append(ConfigProblem(
                        f"{kind} {path}", f"written as a list ({V1BETA4} shape); {V1BETA3} takes a mapping",
                        f"write {path.rsplit('.', 1)[1]}: {{name: value}}"))
        if kind == "ClusterConfiguration":
            problems += _check_cluster(d, m, hosts, control_plane_count)
        if kind == "JoinConfiguration":
            problems += _check_join(d)
    for d in docs:
        if d.get("kind") == "KubeletConfiguration":
            drv = d.get("cgroupDriver")
            if drv not in (None, "systemd", "cgroupfs"):
                problems.append(ConfigProblem("KubeletConfiguration cgroupDriver", f"unknown driver {drv!r}",
                                              "use systemd (containerd SystemdCgroup = true) or cgroupfs"))
    return problems


def _check_cluster(d: dict, m: tuple[int, int], hosts: list[Host], cp_count: int | None) -> list[ConfigProblem]:
    out: list[ConfigProblem] = []
    net = d.get("networking") or {}
    pod_s, svc_s = net.get("podSubnet"), net.get("serviceSubnet")
    pod = svc = None
    for name, val in (("podSubnet", pod_s), ("serviceSubnet", svc_s)):
        if not val:
            continue
        try:
            n = ipaddress.ip_network(val, strict=True)
        except ValueError as e:
            out.append(ConfigProblem(f"ClusterConfiguration networking.{name}", f"{val!r} is not a network: {e}",
                                     "write it as address/prefix with the host bits zero, e.g. 10.244.0.0/16"))
            continue
        if name == "podSubnet":
            pod = n
        else:
            svc = n
    if pod is not None and svc is not None and pod.overlaps(svc):
        out.append(ConfigProblem(
            "ClusterConfiguration networking", f"pod CIDR {pod} overlaps service CIDR {svc}: a pod and a "
            "Service could get the same address and traffic to one would reach the other",
            "choose ranges that do not overlap (kubernetes.pod_cidr, kubernetes.service_cidr; defaults "
            "10.244.0.0/16 and 10.96.0.0/12)"))
    if svc is not None and svc.version == 4 and svc.prefixlen < 12:
        out.append(ConfigProblem("ClusterConfiguration networking.serviceSubnet",
                                 f"{svc} is too large: the API server allows at most a /12 for IPv4 Services",
                                 "use a /12 or smaller range, e.g. 10.96.0.0/12"))
    if pod is not None and pod.version == 4:
        if pod.prefixlen > NODE_CIDR_MASK:
            out.append(ConfigProblem("ClusterConfiguration networking.podSubnet",
                                     f"{pod} is smaller than one node's /{NODE_CIDR_MASK} pod range",
                                     "use a /16 (flannel's default 10.244.0.0/16)"))
        elif hosts and 2 ** (NODE_CIDR_MASK - pod.prefixlen) < len(hosts):
            out.append(ConfigProblem("ClusterConfiguration networking.podSubnet",
                                     f"{pod} holds {2 ** (NODE_CIDR_MASK - pod.prefixlen)} node ranges of "
                                     f"/{NODE_CIDR_MASK}, fewer than the {len(hosts)} hosts",
                                     "use a larger pod range (a /16 holds 256 nodes)"))
    for h in hosts:
        for a in {h.address, node_ip(h)}:
            try:
                ip = ipaddress.ip_address(a)
            except (ValueError, TypeError):
                continue
            for label, n in (("pod", pod), ("service", svc)):
                if n is not None and ip.version == n.version and ip in n:
                    out.append(ConfigProblem(
                        "ClusterConfiguration networking", f"host {h.name} ({ip}) lies inside the {label} CIDR {n}",
                        "move kubernetes.pod_cidr/service_cidr away from the host network"))
    cps = cp_count if cp_count is not None else sum(1 for h in hosts if ROLE_CONTROL_PLANE in h.roles)
    ep = d.get("controlPlaneEndpoint")
    if cps > 1 and not ep:
        out.append(ConfigProblem("ClusterConfiguration controlPlaneEndpoint",
                                 f"{cps} control-plane hosts need a shared endpoint",
                                 "set kubernetes.control_plane_endpoint to a load balancer or VIP (host:port)"))
    elif cps > 1 and hosts:
        cp_addrs = {a for h in hosts if ROLE_CONTROL_PLANE in h.roles for a in (h.address, node_ip(h)) if a}
        if ep and ep.rsplit(":", 1)[0] in cp_addrs:
            out.append(ConfigProblem("ClusterConfiguration controlPlaneEndpoint",
                                     f"{ep} is one control-plane host: when it is down the others cannot be reached",
                                     "point kubernetes.control_plane_endpoint at a load balancer or VIP",
                                     severity="warning"))
    ver = d.get("kubernetesVersion")
    if ver:
        try:
            if minor(str(ver)) != m:
                out.append(ConfigProblem("ClusterConfiguration kubernetesVersion",
                                         f"{ver} differs from the Kubernetes {fmt(m)} the config was checked for",
                                         "set versions.kubernetes and kubernetesVersion alike"))
        except ValueError:
            out.append(ConfigProblem("ClusterConfiguration kubernetesVersion", f"{ver!r} is not a version",
                                     "write it as v1.34.4"))
    return out


def _check_join(d: dict) -> list[ConfigProblem]:
    out: list[ConfigProblem] = []
    bt = ((d.get("discovery") or {}).get("bootstrapToken") or {})
    tok = bt.get("token")
    if tok and not str(tok).startswith("<") and not _TOKEN_RX.match(str(tok)):
        out.append(ConfigProblem("JoinConfiguration discovery.bootstrapToken.token", "not a bootstrap token",
                                 "use the token printed by kubeadm token create (abcdef.0123456789abcdef)"))
    hashes = bt.get("caCertHashes") or []
    if bt and not hashes and not bt.get("unsafeSkipCAVerification"):
        out.append(ConfigProblem("JoinConfiguration discovery.bootstrapToken.caCertHashes", "missing",
                                 "pin the cluster CA with the sha256 hash printed by --print-join-command"))
    if bt.get("unsafeSkipCAVerification"):
        out.append(ConfigProblem("JoinConfiguration discovery.bootstrapToken.unsafeSkipCAVerification",
                                 "joins without checking the cluster CA (a man in the middle could pose as the API server)",
                                 "pin the CA with caCertHashes instead", severity="warning"))
    return out


def errors(problems: list[ConfigProblem]) -> list[ConfigProblem]:
    return [p for p in problems if p.severity == "error"]


def kubeadm_validate(text: str, kubeadm: str | Path, timeout: float = 60.0) -> tuple[bool, str]:
    """Run the real ``kubeadm config validate --config`` on the text; (ok, kubeadm's output)."""
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="kubeadm-") as f:
        f.write(text)
        f.flush()
        p = subprocess.run([str(kubeadm), "config", "validate", "--config", f.name], capture_output=True, text=True,
                           timeout=timeout)
    out = (p.stdout + p.stderr).strip().replace(f.name, "<config>")
    return p.returncode == 0, out


def kubeadm_images(text: str, kubeadm: str | Path, timeout: float = 60.0) -> list[str]:
    """``kubeadm config images list --config``: the control-plane images this config pulls."""
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="kubeadm-") as f:
        f.write(text)
        f.flush()
        p = subprocess.run([str(kubeadm), "config", "images", "list", "--config", f.name], capture_output=True,
                           text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"kubeadm config images list failed: {(p.stdout + p.stderr).strip()[-800:]}")
    return [ln.strip() for ln in p.stdout.splitlines() if ln.strip()]


def kubeadm_version(kubeadm: str | Path) -> str:
    p = subprocess.run([str(kubeadm), "version", "-o", "short"], capture_output=True, text=True, timeout=30)
    return p.stdout.strip()


EXISTING_CONFIG_COMMAND = (f"kubectl --kubeconfig {ADMIN_CONF} --request-timeout=15s -n kube-system "
                           "get configmap kubeadm-config "
                           "-o jsonpath='{.data.ClusterConfiguration}'")


def compare_existing(cluster_config: str, params: Params) -> list[str]:
    """Differences between a running cluster's ClusterConfiguration (the ``kubeadm-config``
    ConfigMap) and what the params would render; [] when it can be reused as is."""
    try:
        live = yaml.safe_load(cluster_config) or {}
    except yaml.YAMLError as e:
        return [f"cannot read the cluster's kubeadm-config: {e}"]
    want = render_init(params)[1]
    out = []
    lv, wv = str(live.get("kubernetesVersion", "")), want["kubernetesVersion"]
    try:
        if minor(lv) != minor(wv):
            out.append(f"it runs Kubernetes {lv}, the params pin {wv}")
    except ValueError:
        out.append(f"its kubernetesVersion {lv!r} is unreadable")
    ln, wn = live.get("networking") or {}, want["networking"]
    for key, param in (("podSubnet", "kubernetes.pod_cidr"), ("serviceSubnet", "kubernetes.service_cidr")):
        if ln.get(key) and ln.get(key) != wn[key]:
            out.append(f"its {key} is {ln.get(key)}, {param} is {wn[key]}")
    if params.kubernetes.control_plane_endpoint and live.get("controlPlaneEndpoint") != want["controlPlaneEndpoint"]:
        out.append(f"its controlPlaneEndpoint is {live.get('controlPlaneEndpoint')!r}, the params say "
                   f"{want['controlPlaneEndpoint']}")
    return out


# ---------------------------------------------------------------------------------------------
# Join commands
# ---------------------------------------------------------------------------------------------

def _join_lines(text: str) -> list[str]:
    """Each ``kubeadm join ...`` command in the text, continuation lines (trailing ``\\``) joined
    and any line prefix (a log tag such as ``kubernetes-bootstrap: ``) removed."""
    lines = text.splitlines()
    out = []
    i = 0
    while i < len(lines):
        line = lines[i]
        pos = line.find("kubeadm join")
        if pos < 0:
            i += 1
            continue
        prefix = line[:pos]
        tag = prefix.strip()
        cmd = line[pos:].rstrip()
        while cmd.endswith("\\") and i + 1 < len(lines):
            i += 1
            nxt = lines[i]
            if tag and nxt.lstrip().startswith(tag):
                nxt = nxt.lstrip()[len(tag):]
            cmd = cmd[:-1].rstrip() + " " + nxt.strip()
        if cmd.endswith("\\"):
            cmd = cmd[:-1].rstrip() + " <cut>"
        out.append(cmd)
        i += 1
    return out


def parse_join_commands(text: str) -> list[JoinInfo]:
    """Every well-formed join command in ``kubeadm init`` or ``kubeadm token create
    --print-join-command`` output. Raises :class:`JoinParseError` when there is none, saying why."""
    cmds = _join_lines(text)
    if not cmds:
        raise JoinParseError("no 'kubeadm join' command in the output (was --print-join-command given?)")
    found, why = [], []
    for c in cmds:
        try:
            found.append(_parse_one(c))
        except JoinParseError as e:
            why.append(str(e))
    if not found:
        raise JoinParseError("; ".join(dict.fromkeys(why)))
    return found


def parse_join_command(text: str, control_plane: bool | None = None) -> JoinInfo:
    """The first join command (or the first worker / control-plane one when ``control_plane`` says
    which) in the output. Old (``--token`` before the endpoint) and new argument orders, klog lines
    and log-tag prefixes are all accepted."""
    found = parse_join_commands(text)
    if control_plane is not None:
        sel = [j for j in found if j.control_plane == control_plane]
        if not sel:
            raise JoinParseError(f"no {'control-plane' if control_plane else 'worker'} join command in the output")
        return sel[0]
    return found[0]


def _parse_one(cmd: str) -> JoinInfo:
    try:
        argv = shlex.split(cmd)
    except ValueError:
        argv = cmd.split()
    argv = argv[2:]  # kubeadm join
    endpoint, token, hashes, cp, key, unsafe = None, None, [], False, None, False
    i = 0
    while i < len(argv):
        a = argv[i]
        val = None
        if a.startswith("--") and "=" in a:
            a, val = a.split("=", 1)
        def take():
            nonlocal i
            if val is not None:
                return val
            i += 1
            return argv[i] if i < len(argv) else ""
        if a == "--token":
            token = take()
        elif a == "--discovery-token-ca-cert-hash":
            hashes.append(take())
        elif a == "--control-plane":
            cp = True
        elif a == "--certificate-key":
            key = take()
        elif a == "--discovery-token-unsafe-skip-ca-verification":
            unsafe = True
        elif a.startswith("--"):
            pass  # a flag we do not need (e.g. --cri-socket=...)
        elif endpoint is None and re.match(r"^[\w.\-\[\]:]+:\d+$", a):
            endpoint = a
        i += 1
    problems = []
    if not endpoint:
        problems.append("no API server endpoint (host:port)")
    if token is None:
        problems.append("no --token")
    elif not _TOKEN_RX.match(token):
        problems.append(f"the token {token!r} is not a bootstrap token (six and sixteen lower-case letters or "
                        "digits, e.g. abcdef.0123456789abcdef): masked or withheld in this output?")
    if not hashes and not unsafe:
        problems.append("no --discovery-token-ca-cert-hash (output cut short?)")
    bad = [h for h in hashes if not _HASH_RX.match(h)]
    if bad:
        problems.append(f"CA hash {bad[0]!r} is not sha256:<64 hex digits> (masked or cut in this output?)")
    if unsafe and not hashes:
        problems.append("the command skips CA verification: mlplat joins only with a pinned CA hash")
    if key is not None and not _CERT_KEY_RX.match(key):
        problems.append("the --certificate-key is not 64 hex digits")
    if problems:
        raise JoinParseError(f"unusable join command ({'; '.join(problems)})")
    return JoinInfo(endpoint, token, hashes, control_plane=cp, certificate_key=key)


def parse_certificate_key(text: str) -> str:
    """The key printed by ``kubeadm init phase upload-certs --upload-certs`` (its last 64-hex line)."""
    keys = [ln.strip() for ln in text.splitlines() if _CERT_KEY_RX.match(ln.strip())]
    if not keys:
        raise JoinParseError("no certificate key (64 hex digits) in the upload-certs output")
    return keys[-1]


# ---------------------------------------------------------------------------------------------
# Plans
# ---------------------------------------------------------------------------------------------

@dataclass
class PlanFile:
    """A file a step writes on a host. ``secret`` files are shown masked and written 0600."""

    path: str
    content: str
    mode: int = 0o600
    secret: bool = False


@dataclass
class HostStep:
    """One step on one host: a read-only ``probe`` (exit 0 means "already done"), then files and
    commands. ``capture`` names the step whose last command's output a later step needs (the join
    command, the kubeconfig); it is handed over in memory, never recorded."""

    host: str
    step: str
    why: str
    probe: str | None = None
    probe_means: str = ""
    files: list[PlanFile] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    capture: str | None = None
    # When the probe passes, still bring differing files up to date (without running commands).
    files_when_converged: bool = False


def init_plan(params: Params, config_text: str) -> list[HostStep]:
    """``kubeadm init`` on the first control plane (skipped when it already runs a cluster)."""
    cp = first_control_plane(params)
    ha = len(control_planes(params)) > 1
    return [HostStep(
        host=cp.name, step="kubeadm | init",
        why="initialise the control plane from the rendered config",
        probe=f"test -f {ADMIN_CONF}",
        probe_means=f"{ADMIN_CONF} exists: this host already runs a control plane, which is reused",
        files=[PlanFile(INIT_CONFIG, config_text)],
        # No separate `kubeadm config images pull`: it pulls every image unconditionally
        # (cmd/kubeadm/app/cmd/config.go, PullControlPlaneImages), which fails on air-gapped hosts
        # whose images were preloaded. init's ImagePull preflight check pulls only the missing ones
        # (nodeRegistration.imagePullPolicy: IfNotPresent).
        commands=[f"kubeadm config validate --config {INIT_CONFIG}",
                  f"kubeadm init --config {INIT_CONFIG}" + (" --upload-certs" if ha else "")],
    )]


def token_step(params: Params) -> list[HostStep]:
    """On the first control plane: a fresh bootstrap token (and, with several control planes, a
    certificate key) for the joins."""
    cp = first_control_plane(params)
    steps = [HostStep(
        host=cp.name, step="kubeadm | token",
        why="a fresh bootstrap token, valid for an hour, printed as a join command",
        commands=[f"kubeadm token create --ttl {TOKEN_TTL} --description 'mlplat join {cluster_name(params)}' "
                  "--print-join-command"],
        capture="join")]
    if len(control_planes(params)) > 1:
        steps.append(HostStep(host=cp.name, step="kubeadm | certificate key",
                              why="upload the control-plane certificates for the other control planes",
                              commands=["kubeadm init phase upload-certs --upload-certs"], capture="certificate_key"))
    return steps


def join_plan(params: Params, join: JoinInfo | None = None, certificate_key: str | None = None,
              api_version: str | None = None) -> list[HostStep]:
    """``kubeadm join`` on every other host (skipped where the host already belongs to a cluster).
    Without ``join`` (plan mode) the token and CA hash are placeholders."""
    join = join or JoinInfo.plan_placeholder(params)
    steps = []
    for h in joining_hosts(params):
        docs = render_join(params, h, join, api_version, certificate_key if ROLE_CONTROL_PLANE in h.roles else None)
        cp = ROLE_CONTROL_PLANE in h.roles
        steps.append(HostStep(
            host=h.name, step="kubeadm | join",
            why=f"join as {'a control plane' if cp else 'a worker'} with the fresh token",
            # A control plane's join writes kubelet.conf (TLS bootstrap) before it adds the etcd
            # member: one that stopped there is not done, and its rerun says so (kubeadm refuses).
            probe=f"test -f {KUBELET_CONF}" + (f" && test -f {ETCD_MANIFEST}" if cp else ""),
            probe_means=(f"{KUBELET_CONF} and {ETCD_MANIFEST} exist: the host already is a control plane" if cp
                         else f"{KUBELET_CONF} exists: the host already belongs to a cluster"),
            files=[PlanFile(JOIN_CONFIG, dump_docs(docs), secret=not join.placeholder)],
            commands=[f"kubeadm join --config {JOIN_CONFIG}", f"rm -f {JOIN_CONFIG}"]))
    return steps


def token_cleanup(params: Params, join: JoinInfo | None) -> list[HostStep]:
    cp = first_control_plane(params)
    tid = join.token_id if join and not join.placeholder else "<token id>"
    return [HostStep(host=cp.name, step="kubeadm | token", why="delete the join token once every host joined",
                     commands=[f"kubeadm token delete {tid}"])]


def kubeconfig_step(params: Params) -> list[HostStep]:
    cp = first_control_plane(params)
    return [HostStep(host=cp.name, step="kubeconfig | fetch", why="copy the admin kubeconfig to this machine",
                     commands=[f"cat {ADMIN_CONF}"], capture="kubeconfig")]


def mask(text: str) -> str:
    """Text with bootstrap tokens and certificate keys masked."""
    text = re.sub(r"\b([a-z0-9]{6})\.[a-z0-9]{16}\b", r"\1.****************", text)
    return re.sub(r"(certificateKey:\s*|--certificate-key\s+)[a-f0-9]{64}\b", r"\1****", text)


def plan_text(steps: list[HostStep]) -> str:
    """A readable, stable text of a plan (the golden files): per step, host, probe, files, commands."""
    out = []
    for s in steps:
        out.append(f"## {s.step} @ {s.host}: {s.why}")
        if s.probe:
            out.append(f"probe: {s.probe}    # exit 0: {s.probe_means}")
        for f in s.files:
            out.append(f"file: {f.path} (mode {f.mode:04o}{', secret' if f.secret else ''})")
            body = mask(f.content) if f.secret else f.content
            out.extend("    " + ln for ln in body.rstrip("\n").splitlines())
        for c in s.commands:
            out.append(f"run: {c}")
        if s.capture:
            out.append(f"keeps: the output ({s.capture})")
        out.append("")
    return "\n".join(out)

