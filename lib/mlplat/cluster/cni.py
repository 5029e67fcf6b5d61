"""The bridge CNI (``kubernetes.cni: bridge``): the standard CNI plugins, no DaemonSet, no image.

Every host gets ``/etc/cni/net.d/10-mlplat-bridge.conflist``: the ``bridge`` plugin (``cni0``,
``isGateway``, ``ipMasq``) with ``host-local`` IPAM over the node's own ``spec.podCIDR`` (the
kube-controller-manager allocates one per node because kubeadm sets ``networking.podSubnet``),
chained with ``portmap`` (hostPort). ``loopback`` is not chained: the container runtime brings up
each pod's ``lo`` itself with that plugin (containerd's CRI does), so it only has to be present.
The plugins come from the OS package ``containernetworking-plugins`` (or ``kubernetes-cni``) and
must be in :data:`BIN_DIR`, where containerd's CRI looks by default; :func:`plugin_check` says
which are missing.

Pods on other nodes are reached through a route per peer node: ``<its podCIDR> via <its
InternalIP>`` (host-gw), which needs every node on one L2 segment (a lab bridge, one switch).
``ip route replace`` only changes the running kernel: the routes are not persisted across a
reboot. After a reboot, rerun 30_kubernetes (this step puts them back and changes nothing else),
or persist them the distribution's way (NetworkManager ``ipv4.routes``, netplan ``routes:``).

Everything is a :class:`~mlplat.cluster.kubeadm.HostStep` (probe, file, commands), so a second
apply finds the file and routes in place and changes nothing; routes inside the pod CIDR that
point at no current node (a node that left) are removed.
"""

from __future__ import annotations

import ipaddress
import json
import shlex
from dataclasses import dataclass
from pathlib import Path

from ..params.schema import Host, Params
from .kubeadm import HostStep, PlanFile, node_ip

NETWORK = "mlplat-bridge"
BRIDGE = "cni0"
CONF_DIR = "/etc/cni/net.d"
CONFLIST = f"{CONF_DIR}/10-{NETWORK}.conflist"
BIN_DIR = "/opt/cni/bin"
# Where the distributions' packages put the same plugins: containernetworking-plugins installs them
# in /usr/lib/cni on Debian/Ubuntu and in /usr/libexec/cni on Fedora/RHEL.
DISTRO_BIN_DIRS = ("/usr/lib/cni", "/usr/libexec/cni")
PLUGINS = ("bridge", "host-local", "portmap", "loopback")
IPAM_DIR = f"/var/lib/cni/networks/{NETWORK}"
# 0.4.0 is understood by every plugin release since 0.8 and by containerd 1.6/1.7/2.x's libcni.
CNI_VERSION = "0.4.0"


@dataclass(frozen=True)
class NodeNet:
    """One node's pod range and the address its peers route that range through."""

    name: str
    pod_cidr: str | None
    address: str | None


def node_networks(nodes: list[dict], params: Params | None = None) -> dict[str, NodeNet]:
    """Node name -> its ``spec.podCIDR`` (the IPv4 one) and InternalIP (else the params' node IP)."""
    hosts = {h.name: h for h in (params.hosts if params else [])}
    out: dict[str, NodeNet] = {}
    for n in nodes:
        md, spec, st = n.get("metadata") or {}, n.get("spec") or {}, n.get("status") or {}
        name = md.get("name")
        if not name:
            continue
        cidrs = list(spec.get("podCIDRs") or []) or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
        v4 = [c for c in cidrs if ipaddress.ip_network(c, strict=False).version == 4]
        addr = next((a.get("address") for a in st.get("addresses") or [] if a.get("type") == "InternalIP"
                     and ipaddress.ip_address(a.get("address")).version == 4), None)
        if addr is None and name in hosts:
            addr = node_ip(hosts[name])
        out[name] = NodeNet(name, v4[0] if v4 else None, addr)
    return out


def conflist(pod_cidr: str) -> str:
    """The CNI network configuration list of one node (JSON, stable formatting)."""
    net = ipaddress.ip_network(pod_cidr, strict=True)
    doc = {
        "cniVersion": CNI_VERSION,
        "name": NETWORK,
        "plugins": [
            {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": True, "hairpinMode": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": str(net)}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    return json.dumps(doc, indent=2) + "\n"


def routes_for(me: str, nets: dict[str, NodeNet]) -> list[tuple[str, str]]:
    """(pod CIDR, via) for every other node that has both, sorted by CIDR."""
    return sorted((n.pod_cidr, n.address) for name, n in nets.items()
                  if name != me and n.pod_cidr and n.address)


def _current_routes(pod_cidr: str) -> str:
    # Routes inside the cluster's pod range that go through a gateway (not cni0's own range).
    return f"ip -4 route show root {shlex.quote(pod_cidr)} | awk '$2 == \"via\" {{print $1 \" via \" $3}}' | sort"


def route_probe(pod_cidr: str, routes: list[tuple[str, str]]) -> str:
    """Read-only: prints the gateway routes inside the pod range; exit 0 when they are exactly
    ``routes``."""
    want = "\\n".join(f"{c} via {v}" for c, v in sorted(routes))
    return (f"have=$({_current_routes(pod_cidr)}); want=$(printf '{want}' | sort); "
            "echo \"$have\"; [ \"$have\" = \"$want\" ]")


def route_commands(pod_cidr: str, routes: list[tuple[str, str]]) -> list[str]:
    """Remove gateway routes inside the pod range that no current node owns; add or fix the rest."""
    keep = " ".join(c for c, _ in routes)
    cmds = [(f"for r in $(ip -4 route show root {shlex.quote(pod_cidr)} | awk '$2 == \"via\" {{print $1}}'); do "
             f"case \" {keep} \" in *\" $r \"*) ;; *) ip route del \"$r\";; esac; done; true")]
    cmds += [f"ip route replace {c} via {v}" for c, v in routes]
    return cmds


def host_step(params: Params, host: Host, own: str, routes: list[tuple[str, str]]) -> HostStep:
    """The conflist with this node's pod range, and the routes to every other node's range."""
    pod = params.kubernetes.pod_cidr
    peers = ", ".join(f"{c} via {v}" for c, v in routes) or "none (no other node)"
    return HostStep(
        host=host.name, step="cni | bridge",
        why=f"bridge {BRIDGE} over this node's pods {own}; routes to the other nodes' pods: {peers}",
        probe=route_probe(pod, routes),
        probe_means="the routes to the other nodes' pod ranges are in place",
        files=[PlanFile(CONFLIST, conflist(own), mode=0o644)],
        commands=route_commands(pod, routes),
        files_when_converged=True)


def plugin_check() -> str:
    """Read-only: ``missing <plugin>`` for each plugin absent from :data:`BIN_DIR`, and
    ``elsewhere <path>`` when a distribution's package put it in one of :data:`DISTRO_BIN_DIRS`."""
    return (f"for p in {' '.join(PLUGINS)}; do [ -x {BIN_DIR}/$p ] && continue; echo \"missing $p\"; "
            f"for d in {' '.join(DISTRO_BIN_DIRS)}; do [ -x $d/$p ] && {{ echo \"elsewhere $d/$p\"; break; }}; "
            "done; done; true")


def _missing(text: str) -> list[str]:
    return [ln.split()[1] for ln in text.splitlines() if ln.startswith("missing ")]


def _elsewhere(text: str) -> dict[str, str]:
    """plugin name -> the distribution's copy, from a :func:`plugin_check` output."""
    paths = [ln.split()[1] for ln in text.splitlines() if ln.startswith("elsewhere ")]
    return {Path(x).name: x for x in paths}


def distro_dirs(text: str) -> str:
    """The distribution folder(s) a :func:`plugin_check` output found plugins in."""
    return ", ".join(sorted({str(Path(x).parent) for x in _elsewhere(text).values()}))


def plugin_problem(text: str) -> str | None:
    """The failure message for a :func:`plugin_check` output, or None when every plugin is there."""
    missing = _missing(text)
    if not missing:
        return None
    msg = f"CNI plugins missing in {BIN_DIR}: {', '.join(missing)}"
    if _elsewhere(text):
        where = distro_dirs(text)
        msg += (f" (the distribution's package put them in {where}: link or copy them to {BIN_DIR}, "
                f"or set containerd's CRI cni bin_dir to {where})")
    else:
        msg += " (install the containernetworking-plugins or kubernetes-cni package)"
    return msg


def link_command(text: str) -> str | None:
    """When every missing plugin is in a distribution folder (:data:`DISTRO_BIN_DIRS`), the command
    that links them into :data:`BIN_DIR`, where containerd and kubeadm-era CNIs look."""
    missing, found = _missing(text), _elsewhere(text)
    if not missing or set(missing) - set(found):
        return None
    return f"mkdir -p {BIN_DIR} && " + " && ".join(f"ln -sfn {found[p]} {BIN_DIR}/{p}" for p in missing)


def reset_commands(pod_cidr: str) -> list[str]:
    """Teardown: the conflist, host-local's leases and every gateway route inside the pod range
    (cni0 itself goes with the other links in :func:`mlplat.cluster.inventory.reset_commands`)."""
    return [f"rm -rf {CONFLIST} {IPAM_DIR}",
            (f"for r in $(ip -4 route show root {shlex.quote(pod_cidr)} 2>/dev/null "
             "| awk '$2 == \"via\" {print $1}'); do ip route del \"$r\"; done; true")]
