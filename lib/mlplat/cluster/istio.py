"""Istio for phase 40: the version guard, what to apply, the add-ons, and how to check and reach it.

Two ways in, chosen by ``istio.method``:

- ``kubeflow-manifests`` (default): the Istio that Kubeflow ships, pre-rendered in
  ``common/istio`` of the Kubeflow manifests (26.03: images 1.28.0, Istio CNI), built with
  kustomize from the offline bundle, in the order of Kubeflow's README: the Kubeflow namespaces
  (Istio's Sidecar exceptions live in ``kubeflow``), the Istio CRDs, ``istio-system``, and the
  install overlay that ``example/kustomization.yaml`` uses (``overlays/oauth2-proxy``). Phase 50
  leaves exactly these paths (:data:`KUBEFLOW_ISTIO_PATHS`) out of its build.
- ``istioctl``: ``istioctl manifest generate --set profile=<profile>`` rendered by the istioctl on
  PATH, then applied server-side like everything else (one field manager, dry run in plan mode,
  CRDs first, webhooks last), so teardown and idempotence work the same way. The istioctl
  client's own version is checked by the guard.

The add-ons (Kiali, Grafana, Prometheus, Jaeger) come from Istio's ``samples/addons`` of the same
release. Kubeflow's ``istio-system`` enforces Pod Security ``restricted``; three of the four samples
(Prometheus, Jaeger, Kiali) do not meet it as released, so their pods would be refused by
admission and the Deployments would never become available. :func:`restricted_pod_security`
adds the missing settings (non-root user of the image, no privilege escalation, all capabilities
dropped, RuntimeDefault seccomp) and says what it changed.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from dataclasses import dataclass, field

from ..kube.manifests import load_manifests, ref
from ..params.schema import Params
from ..params.versions import ISTIO_K8S, KUBEFLOW, fmt, minor

ISTIO_NS = "istio-system"
# The Istio parts of kubeflow/manifests (26.03) that phase 40 applies, in order.
KUBEFLOW_NAMESPACE_PATH = "common/kubeflow-namespace/base"
KUBEFLOW_ISTIO_PATHS = (
    "common/istio/istio-crds/base",
    "common/istio/istio-namespace/base",
    "common/istio/istio-install/overlays/oauth2-proxy",
)
ADDONS = ("kiali", "grafana", "prometheus", "jaeger")
# Workloads that must become available, per source.
KUBEFLOW_WORKLOADS = (("Deployment", ISTIO_NS, "istiod"), ("Deployment", ISTIO_NS, "istio-ingressgateway"),
                      ("DaemonSet", "kube-system", "istio-cni-node"))
ISTIOCTL_WORKLOADS = (("Deployment", ISTIO_NS, "istiod"),)
# How to reach each add-on's UI: service, service port, local port, path.
DASHBOARDS = {
    "kiali": ("kiali", 20001, 20001, "/kiali"),
    "grafana": ("grafana", 3000, 3000, "/"),
    "prometheus": ("prometheus", 9090, 9090, "/"),
    "jaeger": ("tracing", 80, 16686, "/jaeger"),
}
# Numeric users of the add-on images (their Dockerfiles' USER), so runAsNonRoot can be verified
# by the kubelet: a non-numeric USER ("nobody") with runAsNonRoot fails at container start.
IMAGE_UIDS = {
    "grafana/grafana": 472,
    "prom/prometheus": 65534,
    "prometheus-operator/prometheus-config-reloader": 65534,
    "jaegertracing/all-in-one": 10001,
}


# ---------------------------------------------------------------------------------------------
# The guard
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GuardCheck:
    """One line of the guard: what was checked, passed or not, and the fix when not."""

    check: str
    ok: bool
    message: str
    fix: str = ""


def _k8s_range(lo, hi) -> str:
    return f"{fmt(lo)}+" if hi is None else f"{fmt(lo)}-{fmt(hi)}"


def guard(params: Params, server_version: str | None = None, istioctl_version: str | None = None) -> list[GuardCheck]:
    """Check the Istio/Kubernetes (and, with Kubeflow's Istio, Kubeflow/Kubernetes) pairs against the
    support tables of :mod:`mlplat.params.versions`, for the cluster's own version (``server_version``,
    from ``/version``) and the params' ``versions.kubernetes``. Nothing is applied before this passes."""
    out: list[GuardCheck] = []
    pv = minor(params.versions.kubernetes)
    k8s_list = [("params versions.kubernetes", pv)]
    if server_version:
        sv = minor(server_version)
        if sv != pv:
            out.append(GuardCheck("kubernetes | params vs cluster", True,
                                  f"params say Kubernetes {params.versions.kubernetes}, the cluster runs {server_version}: "
                                  "both are checked", "set versions.kubernetes to what the cluster runs"))
        else:
            out.append(GuardCheck("kubernetes | params vs cluster", True,
                                  f"the cluster runs {server_version}, as the params say"))
        k8s_list = [("cluster", sv)] + ([("params versions.kubernetes", pv)] if sv != pv else [])
    istio_text = istioctl_version if params.istio.method == "istioctl" and istioctl_version else params.versions.istio
    try:
        iv = minor(istio_text)
    except ValueError:
        return out + [GuardCheck("istio | version", False, f"cannot read the Istio version {istio_text!r}",
                                 "set versions.istio to a release such as 1.28.0")]
    if params.istio.method == "istioctl" and istioctl_version:
        pi = minor(params.versions.istio)
        out.append(GuardCheck("istio | istioctl vs params", pi == iv,
                              f"istioctl on PATH is {istioctl_version}" + (
                                  ", as the params say" if pi == iv else f", the params pin {params.versions.istio}"),
                              "" if pi == iv else f"put istioctl {params.versions.istio} first on PATH, or pin "
                                                  f"versions.istio to {istioctl_version}"))
    rng = ISTIO_K8S.get(iv)
    for label, kv in k8s_list:
        if rng is None:
            out.append(GuardCheck("istio | kubernetes", False, f"Istio {fmt(iv)} is not in the support table",
                                  "use an Istio release from reference/versions.md 2a (1.28 for Kubeflow 26.03)"))
            break
        lo, hi = rng
        ok = lo <= kv <= hi
        out.append(GuardCheck(
            "istio | kubernetes", ok,
            f"Istio {fmt(iv)} supports Kubernetes {fmt(lo)}-{fmt(hi)}; {label} is {fmt(kv)}" + (
                "" if ok else " (its CRDs, webhooks or policy APIs are not served there)" if kv > hi else
                " (below its minimum)"),
            "" if ok else "use the Istio your Kubeflow release ships (1.28 for 26.03 on Kubernetes 1.34)"))
    if params.istio.method == "kubeflow-manifests":
        kf = str(params.versions.kubeflow)
        row = KUBEFLOW.get(kf)
        if row is None:
            out.append(GuardCheck("kubeflow | kubernetes", False, f"Kubeflow {kf} is not in the compatibility table",
                                  f"use one of {', '.join(KUBEFLOW)}"))
        else:
            for label, kv in k8s_list:
                lo, hi = row["k8s_min"], row["k8s_max"]
                ok = kv >= lo and (hi is None or kv <= hi)
                out.append(GuardCheck(
                    "kubeflow | kubernetes", ok,
                    f"Kubeflow {kf} (its bundled Istio) supports Kubernetes {_k8s_range(lo, hi)}; {label} is {fmt(kv)}",
                    "" if ok else (f"upgrade the cluster to Kubernetes {fmt(lo)} or later" if kv < lo
                                   else "use a newer Kubeflow release")))
            shipped = row["istio"]
            ok = shipped == iv
            out.append(GuardCheck("kubeflow | istio", ok,
                                  f"Kubeflow {kf} ships Istio {fmt(shipped)}; versions.istio is {params.versions.istio}",
                                  "" if ok else f"set versions.istio to {fmt(shipped)}.x (the bundled Istio is what gets installed)"))
    return out


def guard_ok(checks: list[GuardCheck]) -> bool:
    return all(c.ok for c in checks)


# ---------------------------------------------------------------------------------------------
# istioctl
# ---------------------------------------------------------------------------------------------

def istioctl_path() -> str | None:
    return shutil.which("istioctl")


def istioctl_version(path: str, timeout: float = 30.0) -> str:
    """The istioctl client's version (``istioctl version --remote=false``)."""
    p = subprocess.run([path, "version", "--remote=false"], capture_output=True, text=True, timeout=timeout)
    return parse_istioctl_version(p.stdout + p.stderr)


def parse_istioctl_version(text: str) -> str:
    """``client version: 1.28.0`` (or a bare ``1.28.0``) -> ``1.28.0``."""
    m = re.search(r"(?:client version:\s*)?\b(\d+\.\d+\.\d+(?:[-.][\w.]+)?)", text)
    if not m:
        raise ValueError(f"no version in istioctl output: {text.strip()[:200]!r}")
    return m.group(1)


def istioctl_manifest(path: str, profile: str, timeout: float = 300.0) -> list[dict]:
    """``istioctl manifest generate --set profile=<profile>`` as objects."""
    p = subprocess.run([path, "manifest", "generate", "--set", f"profile={profile}"], capture_output=True, text=True,
                       timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"istioctl manifest generate failed: {(p.stderr or p.stdout).strip()[-1000:]}")
    return load_manifests(p.stdout)


def istioctl_commands(params: Params) -> list[str]:
    """What the istioctl path runs, for the plan table."""
    return [f"istioctl version --remote=false   # must print {params.versions.istio}",
            f"istioctl manifest generate --set profile={params.istio.profile}   # then server-side apply"]


# ---------------------------------------------------------------------------------------------
# Pod Security "restricted" for the add-ons
# ---------------------------------------------------------------------------------------------

def _image_repo(image: str) -> str:
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name = name[: len(name) - len(last)] + last.split(":", 1)[0]
    parts = name.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        parts = parts[1:]
    return "/".join(parts)


def restricted_pod_security(objs: list[dict], namespaces: set[str]) -> tuple[list[dict], list[str]]:
    """Copies of ``objs`` whose workloads in ``namespaces`` meet Pod Security ``restricted``, and a
    line per workload saying what was added. Settings already present are kept."""
    out = copy.deepcopy(objs)
    notes: list[str] = []
    for o in out:
        if o.get("kind") not in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            continue
        if ((o.get("metadata") or {}).get("namespace")) not in namespaces:
            continue
        spec = (((o.get("spec") or {}).get("template") or {}).get("spec")) or {}
        changes: list[str] = []
        psc = spec.setdefault("securityContext", {})
        containers = (spec.get("initContainers") or []) + (spec.get("containers") or [])
        if not psc.get("seccompProfile") and not all((c.get("securityContext") or {}).get("seccompProfile")
                                                      for c in containers):
            psc["seccompProfile"] = {"type": "RuntimeDefault"}
            changes.append("seccompProfile RuntimeDefault")
        if psc.get("runAsNonRoot") is None:
            psc["runAsNonRoot"] = True
            changes.append("runAsNonRoot")
        for c in containers:
            sc = c.setdefault("securityContext", {})
            cc = []
            if sc.get("allowPrivilegeEscalation") is not False:
                sc["allowPrivilegeEscalation"] = False
                cc.append("allowPrivilegeEscalation false")
            caps = sc.setdefault("capabilities", {})
            if "ALL" not in (caps.get("drop") or []):
                caps["drop"] = ["ALL"]
                cc.append("drop ALL capabilities")
            uid = IMAGE_UIDS.get(_image_repo(c.get("image", "")))
            if uid is not None and sc.get("runAsUser") is None and psc.get("runAsUser") is None:
                sc["runAsUser"] = uid
                sc.setdefault("runAsGroup", uid)
                cc.append(f"runAsUser {uid} (the image's user)")
            if cc:
                changes.append(f"{c.get('name')}: " + ", ".join(cc))
        if uid_needed := [c.get("name") for c in containers
                          if (c.get("securityContext") or {}).get("runAsUser") is None and psc.get("runAsUser") is None
                          and _image_repo(c.get("image", "")) not in IMAGE_UIDS
                          and not (c.get("securityContext") or {}).get("runAsNonRoot")]:
            changes.append(f"{', '.join(uid_needed)}: image user not known here; the kubelet checks it is non-root")
        if changes:
            notes.append(f"{ref(o)}: " + "; ".join(changes))
    return out, notes


def enforced_restricted(objs: list[dict], live_labels: dict[str, dict] | None = None) -> set[str]:
    """Namespaces that enforce Pod Security ``restricted``, from the objects about to be applied and
    the live namespaces' labels."""
    out = set()
    for o in objs:
        if o.get("kind") == "Namespace":
            lv = ((o.get("metadata") or {}).get("labels") or {}).get("pod-security.kubernetes.io/enforce")
            if lv == "restricted":
                out.add(o["metadata"]["name"])
    for name, labels in (live_labels or {}).items():
        if (labels or {}).get("pod-security.kubernetes.io/enforce") == "restricted":
            out.add(name)
    return out


# ---------------------------------------------------------------------------------------------
# Verification helpers
# ---------------------------------------------------------------------------------------------

def probe_pod(namespace: str, name: str = "mlplat-injection-probe") -> dict:
    """A pod created with a server-side dry run in an injection-enabled namespace: the mutating
    webhook answers (dry runs call webhooks declaring no side effects), nothing is stored."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app": "mlplat-injection-probe"}},
            "spec": {"containers": [{"name": "probe", "image": "registry.k8s.io/pause:3.10.1",
                                     "securityContext": {"allowPrivilegeEscalation": False,
                                                         "capabilities": {"drop": ["ALL"]},
                                                         "runAsNonRoot": True, "runAsUser": 65535,
                                                         "seccompProfile": {"type": "RuntimeDefault"}}}]}}


def injected(pod: dict) -> list[str]:
    """Names of the containers Istio's injector added (istio-proxy, istio-init / istio-validation)."""
    spec = pod.get("spec") or {}
    names = [c.get("name") for c in (spec.get("initContainers") or []) + (spec.get("containers") or [])]
    return [n for n in names if n and n.startswith("istio-")]


@dataclass
class Dashboard:
    addon: str
    service: str
    port: int
    local_port: int
    path: str
    command: str = field(default="")
    url: str = field(default="")


def dashboards(addons: list[str], kubeconfig: str | None = None, context: str | None = None) -> list[Dashboard]:
    """``kubectl port-forward`` commands for each add-on's UI."""
    out = []
    kc = (f" --kubeconfig {kubeconfig}" if kubeconfig else "") + (f" --context {context}" if context else "")
    for a in addons:
        svc, port, local, path = DASHBOARDS[a]
        out.append(Dashboard(a, svc, port, local, path,
                             f"kubectl{kc} -n {ISTIO_NS} port-forward svc/{svc} {local}:{port}",
                             f"http://localhost:{local}{path}"))
    return out

