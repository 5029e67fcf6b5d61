"""What mlplat put into a cluster, and how teardown takes it out again; the host reset script.

**What counts as mlplat's**: every object, of every served resource, whose ``managedFields`` name
mlplat's field manager (``kubernetes.field_manager``) on the object itself (not only on its status).
All phases write with that one manager (server-side apply), so this finds what phases 30-60
created without a registry of their own. Kept, and said so:

- Nodes: only the labels mlplat owns are released (an empty apply with the same manager);
- the cluster's own namespaces (default, kube-system, kube-public, kube-node-lease);
- objects that another manager also *applies* (another tool, or the lab, declares them too).

**Blind spot**: an object applied with no field besides its name (a bare ``Namespace`` with no
labels) leaves no managedFields entry, since the manager owns nothing; it cannot be told apart
from anyone else's and is not removed. Everything phases 30 and 40 apply owns fields.

**Order**: admission webhooks and API services first (a webhook whose backend is being deleted
would block the deletes after it), then namespaced objects outside the namespaces to delete, then
cluster-scoped objects, then namespaces, then CRDs (their custom resources go with them).
Objects inside a namespace being deleted are left to the namespace controller.
"""

from __future__ import annotations

import shlex
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..kube import Kube, KubeError, Resource
from ..kube.wait import WaitTimeout, wait_for
from . import cni

PARTIAL_LIST = "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io,application/json"
SYSTEM_NAMESPACES = {"default", "kube-system", "kube-public", "kube-node-lease"}
FIRST_KINDS = {"MutatingWebhookConfiguration", "ValidatingWebhookConfiguration", "ValidatingAdmissionPolicy",
               "ValidatingAdmissionPolicyBinding", "MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding",
               "APIService"}
SKIP_RESOURCES = {("", "events"), ("events.k8s.io", "events"), ("coordination.k8s.io", "leases"),
                  ("", "bindings"), ("", "componentstatuses")}


@dataclass
class Owned:
    """One object mlplat's field manager wrote, and what teardown does with it."""

    resource: Resource
    name: str
    namespace: str | None
    action: str  # delete | release-labels | keep | inside-namespace
    why: str = ""
    managers: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return self.resource.kind

    @property
    def ref(self) -> str:
        return f"{self.kind} {self.namespace + '/' if self.namespace else ''}{self.name}"

    def tier(self) -> int:
        if self.kind in FIRST_KINDS:
            return 0
        if self.kind == "CustomResourceDefinition":
            return 4
        if self.kind == "Namespace":
            return 3
        return 1 if self.resource.namespaced else 2


def _ours(entries: list[dict], manager: str) -> bool:
    return any(e.get("manager") == manager and not e.get("subresource") for e in entries or [])


def _other_appliers(entries: list[dict], manager: str) -> list[str]:
    return sorted({e.get("manager", "?") for e in entries or []
                   if e.get("operation") == "Apply" and e.get("manager") != manager and not e.get("subresource")})


def scan(kube: Kube, field_manager: str, workers: int = 8) -> tuple[list[Owned], list[str]]:
    """Every object ``field_manager`` wrote, classified (see the module text). Returns the objects
    and the resources that could not be listed (with why)."""
    resources = [r for r in kube.discovery.all(preferred_only=True)
                 if "list" in r.verbs and "delete" in r.verbs and (r.group, r.plural) not in SKIP_RESOURCES]
    problems: list[str] = []

    def one(res: Resource) -> list[Owned]:
        items: list[dict] = []
        cont = None
        while True:
            try:
                out = kube.request("GET", res.path(), query={"limit": 500, "continue": cont}, accept=PARTIAL_LIST)
            except KubeError as e:
                if e.status not in (404, 405):
                    problems.append(f"{res.group_resource}: {e}")
                return []
            items.extend(out.get("items") or [])
            cont = (out.get("metadata") or {}).get("continue")
            if not cont:
                break
        found = []
        for it in items:
            md = it.get("metadata") or {}
            mf = md.get("managedFields") or []
            if not _ours(mf, field_manager):
                continue
            name, ns = md.get("name"), md.get("namespace")
            managers = sorted({e.get("manager", "?") for e in mf})
            others = _other_appliers(mf, field_manager)
            if res.kind == "Node" and not res.group:
                found.append(Owned(res, name, ns, "release-labels", "a node: only mlplat's labels are removed", managers))
            elif res.kind == "Namespace" and not res.group and name in SYSTEM_NAMESPACES:
                found.append(Owned(res, name, ns, "keep", "a namespace of the cluster itself", managers))
            elif others:
                found.append(Owned(res, name, ns, "keep", f"also applied by {', '.join(others)}", managers))
            else:
                found.append(Owned(res, name, ns, "delete", "", managers))
        return found

    with ThreadPoolExecutor(max_workers=max(1, workers)) as ex:
        owned = [o for part in ex.map(one, resources) for o in part]
    doomed_ns = {o.name for o in owned if o.kind == "Namespace" and not o.resource.group and o.action == "delete"}
    for o in owned:
        if o.action == "delete" and o.namespace in doomed_ns:
            o.action = "inside-namespace"
            o.why = f"goes with namespace {o.namespace}"
    owned.sort(key=lambda o: (o.tier(), o.kind, o.namespace or "", o.name))
    return owned, problems


def delete_all(kube: Kube, owned: list[Owned], dry_run: bool = False, workers: int = 8) -> list[tuple[Owned, str]]:
    """Delete the ``delete`` objects tier by tier (background propagation, so dependents go too);
    returns (object, outcome) pairs. A 404 counts as already gone."""
    results: list[tuple[Owned, str]] = []
    for t in range(5):
        batch = [o for o in owned if o.action == "delete" and o.tier() == t]

        def one(o: Owned) -> tuple[Owned, str]:
            try:
                got = kube.delete(o.resource, o.name, o.namespace, dry_run=dry_run)
                return o, ("would delete" if dry_run else "deleted") if got is not None else "already gone"
            except KubeError as e:
                return o, f"failed: {e}"

        with ThreadPoolExecutor(max_workers=max(1, workers)) as ex:
            results.extend(ex.map(one, batch))
    return results


def wait_gone(kube: Kube, owned: list[Owned], timeout: float = 180.0) -> dict[str, str]:
    """Wait for deleted namespaces and CRDs to disappear; ref -> what still holds it, for those left."""
    left: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    for kind, api in (("Namespace", "v1"), ("CustomResourceDefinition", "apiextensions.k8s.io/v1")):
        names = [o.name for o in owned if o.kind == kind and o.action == "delete"]
        if not names:
            continue
        try:
            wait_for(kube, kind, names, condition="Deleted", timeout=max(1.0, deadline - time.monotonic()),
                     api_version=api, progress=False)
        except WaitTimeout as e:
            for key, why in (e.missing or {}).items():
                left[f"{kind} {key}"] = why
    return left


def strip_custom_resource_finalizers(kube: Kube, crd_name: str) -> list[str]:
    """Remove the finalizers of every custom resource of a CRD that is being deleted (their
    controller is gone, so they would hold the CRD forever); one line per resource changed."""
    from ..kube.client import MERGE_PATCH

    crd = kube.get_or_none(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd_name}")
    if crd is None:
        return []
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    version = next((v["name"] for v in spec.get("versions") or [] if v.get("storage")), None)
    if version is None:
        return []
    res = Resource(spec.get("group", ""), version, names.get("plural", ""), names.get("kind", ""),
                   spec.get("scope") == "Namespaced")
    done = []
    for it in kube.list(res):
        md = it.get("metadata") or {}
        if md.get("finalizers"):
            try:
                kube.request("PATCH", res.path(md.get("namespace"), md["name"]),
                             body={"metadata": {"finalizers": None}}, content_type=MERGE_PATCH)
                done.append(f"removed finalizers {', '.join(md['finalizers'])} from {res.kind} "
                            f"{md.get('namespace') + '/' if md.get('namespace') else ''}{md['name']}")
            except KubeError as e:
                if not e.object_missing:
                    raise
    return done


# ---------------------------------------------------------------------------------------------
# Hosts
# ---------------------------------------------------------------------------------------------

# What kubeadm init/join leave in /etc/kubernetes (reset removes most; the rest is removed after it).
KUBEADM_LEFTOVERS = ("/etc/kubernetes/admin.conf", "/etc/kubernetes/super-admin.conf", "/etc/kubernetes/kubelet.conf",
                     "/etc/kubernetes/bootstrap-kubelet.conf", "/etc/kubernetes/controller-manager.conf",
                     "/etc/kubernetes/scheduler.conf", "/etc/kubernetes/pki", "/etc/kubernetes/tmp")
STATIC_PODS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
# What flannel leaves on a node: its CNI config (the bundle's install-cni writes it), its lease file
# folder, the delegate configs its CNI plugin keeps per pod, and host-local's leases of its network
# (the bundle's conflist names it cbr0).
FLANNEL_STATE = ("/etc/cni/net.d/10-flannel.conflist", "/run/flannel", "/var/lib/cni/flannel", "/var/lib/cni/networks/cbr0")


def host_probe(pod_cidr: str | None = None) -> str:
    """Read-only: what of a kubeadm node is on this host, one line per finding (``path``, ``link``,
    ``route``, ``iptables``; ``binary kubeadm`` is information only: packages are another step's).
    With ``pod_cidr``, gateway routes inside it (host-gw routes of the bridge CNI or flannel)."""
    # Only the CNI files teardown removes: another tool's (podman's 87-podman*.conflist) are not ours
    # and would keep the probe from ever passing.
    paths = " ".join(KUBEADM_LEFTOVERS + ("/var/lib/kubelet/config.yaml", "/var/lib/etcd", cni.CONFLIST,
                                          *FLANNEL_STATE, cni.IPAM_DIR))
    lines = [
        f"for f in {paths}; do",
        '  if [ -e "$f" ]; then',
        '    if [ -d "$f" ]; then [ -n "$(ls -A "$f" 2>/dev/null)" ] && echo "path $f"; else echo "path $f"; fi',
        "  fi",
        "done",
        "for f in /etc/kubernetes/manifests/*.yaml /etc/mlplat/kubeadm-*.yaml /etc/cni/net.d/*istio*; do",
        '  [ -e "$f" ] && echo "path $f"',
        "done",
        "command -v kubeadm >/dev/null 2>&1 && echo \"binary kubeadm\"",
        "for l in cni0 flannel.1 kube-ipvs0; do ip link show \"$l\" >/dev/null 2>&1 && echo \"link $l\"; done",
    ]
    if pod_cidr:
        lines.append(f"ip -4 route show root {shlex.quote(pod_cidr)} 2>/dev/null | "
                     "awk '$2 == \"via\" {print \"route \" $1 \" via \" $3}'")
    lines += [
        "if command -v iptables-save >/dev/null 2>&1; then",
        "  n=$(iptables-save 2>/dev/null | grep -c -E 'KUBE-|FLANNEL|CNI-') ; [ \"$n\" -gt 0 ] && echo \"iptables $n\"",
        "fi",
        "true",
    ]
    return "\n".join(lines)


HOST_PROBE = host_probe()


def reset_probe(pod_cidr: str | None = None) -> str:
    """The reset step's probe: the findings, exit 0 when nothing but a kubeadm binary was found."""
    return f"out=$({host_probe(pod_cidr)}); echo \"$out\"; [ -z \"$(echo \"$out\" | grep -v '^binary ')\" ]"


def parse_host_probe(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"path": [], "binary": [], "link": [], "route": [], "iptables": []}
    for line in text.splitlines():
        kind, _, rest = line.strip().partition(" ")
        if kind in out and rest:
            out[kind].append(rest)
    return out


def reset_commands(cni_iptables: bool = True, pod_cidr: str | None = None) -> list[str]:
    """``kubeadm reset`` and what it leaves behind (its own output says so): CNI configuration
    (flannel's, the bridge CNI's, with its leases and, given ``pod_cidr``, its routes), flannel's
    state and links, kubeadm's files in /etc/kubernetes, and the iptables rules of kube-proxy,
    flannel and the CNI plugins. Only rules and chains with those names are removed; a site's own
    firewall rules stay, and so do files in /etc/kubernetes kubeadm did not write."""
    leftovers = " ".join(KUBEADM_LEFTOVERS + tuple(f"/etc/kubernetes/manifests/{n}.yaml" for n in STATIC_PODS))
    cmds = [
        "if command -v kubeadm >/dev/null 2>&1; then kubeadm reset -f --cri-socket unix:///run/containerd/containerd.sock; fi",
        f"rm -rf {' '.join(FLANNEL_STATE)} /etc/cni/net.d/*istio* /etc/mlplat/kubeadm-*.yaml",
    ]
    if pod_cidr:
        cmds += cni.reset_commands(pod_cidr)
    if cni_iptables:
        # kube-proxy's IPVS services, only where kube-proxy ran in IPVS mode (its kube-ipvs0 link is
        # there): `ipvsadm --clear` drops every virtual server, a site's own (keepalived) too.
        cmds.append("if ip link show kube-ipvs0 >/dev/null 2>&1 && command -v ipvsadm >/dev/null 2>&1; then "
                    "ipvsadm --clear; fi")
    cmds += [
        "for l in cni0 flannel.1 kube-ipvs0; do ip link show $l >/dev/null 2>&1 && ip link delete $l; done; true",
        # Empty directories go too; one a package owns keeps its placeholder and stays.
        f"rm -rf {leftovers}; rmdir /etc/kubernetes/manifests /etc/kubernetes 2>/dev/null; true",
    ]
    if cni_iptables:
        for tool in ("iptables", "ip6tables"):
            cmds.append(
                f"if command -v {tool}-save >/dev/null 2>&1; then {tool}-save | grep -v -E 'KUBE-|FLANNEL|CNI-' "
                f"| {tool}-restore; fi")
    return cmds


def reset_steps(params) -> list:
    """``kubeadm reset`` and its leftovers on every host, workers first (phase 99's plan)."""
    from ..params.schema import ROLE_CONTROL_PLANE
    from .kubeadm import HostStep

    order = [h for h in params.hosts if ROLE_CONTROL_PLANE not in h.roles] + \
            [h for h in params.hosts if ROLE_CONTROL_PLANE in h.roles]
    pod = params.kubernetes.pod_cidr
    return [HostStep(
        host=h.name, step="kubeadm | reset",
        why="kubeadm reset; CNI configuration, links and pod routes; kubeadm's files in /etc/kubernetes; "
            "Kubernetes iptables rules",
        probe=reset_probe(pod),
        probe_means="no kubeadm state, CNI configuration, links, pod routes or Kubernetes iptables rules on the host",
        commands=reset_commands(pod_cidr=pod)) for h in order]
