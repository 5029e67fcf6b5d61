"""What makes a lab host able to be a real Kubernetes node (``mlplat lab up --nodes real``).

A KWOK lab host is an sshd on a loopback address. A real-node lab host also gets, as kind's and
k0s-in-docker's node containers do (see reference/real-nodes.md):

- its own **network namespace** ``mlplat-<lab>-<host>`` with ``eth0`` on a lab bridge. The bridge
  lives in a namespace of its own (``mlplat-<lab>-core``, address ``.254``: the hosts' default
  gateway, which forwards nothing: ``ip_forward`` stays 0 there, so no packet can leave the
  machine), and the machine reaches the hosts through one more veth (``mlab<lab>``, address
  ``.1``). kube-proxy's iptables rules, CNI bridges and routes of one host never touch another's;
- its own **cgroup root**: ``/sys/fs/cgroup/<controller>/mlplat-lab/<lab>/<host>`` in every v1
  hierarchy (cpuset.cpus/mems copied down), entered before ``unshare --cgroup``, so the kubelet
  sees ``/`` and puts ``/kubepods`` under it;
- **real directories** (not overlays: containerd's overlayfs snapshotter cannot use an overlay as
  upper directory) bound over ``/var/lib/containerd``, ``/var/lib/kubelet``, ``/var/log/pods`` and
  ``/var/lib/etcd``; a fresh sysfs and cgroup mounts of its own; ``/`` made rshared inside its
  mount namespace (never shared with the machine's);
- an init (:mod:`mlplat.lab.supervisor`) as PID 1, with ``systemctl``/``journalctl`` shims.

The kubelet writes a few machine-wide sysctls no namespace isolates (:data:`MACHINE_SYSCTLS`);
``up`` records them once and ``down`` restores them. :func:`leftovers` lists everything of a lab
that could outlive it (network namespaces, links, cgroup directories, sysctls changed), which
``down`` checks is empty.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import subprocess
from pathlib import Path

DEFAULT_NETWORK = "10.213.0"
HOST_OFFSET = 10           # host i gets .<10 + i>
MACHINE_ADDRESS = 1        # the machine's end of the lab bridge
GATEWAY_ADDRESS = 254      # the inert gateway in the core namespace
CGROUP_BASE = "mlplat-lab"
CGROUP_ROOT = Path("/sys/fs/cgroup")
BIND_DIRS = ("var/lib/containerd", "var/lib/kubelet", "var/log/pods", "var/lib/etcd")
# Set by the kubelet at start (pkg/kubelet/cm/container_manager_linux.go setupKernelTunables); they
# are global, not per namespace.
MACHINE_SYSCTLS = ("vm.overcommit_memory", "vm.panic_on_oom", "kernel.panic", "kernel.panic_on_oops",
                   "kernel.keys.root_maxkeys", "kernel.keys.root_maxbytes")
SYSCTL_FILE = "machine-sysctls.json"


class RealNodesError(RuntimeError):
    pass


def lab_id(state_dir: Path) -> str:
    return hashlib.sha256(str(Path(state_dir).absolute()).encode()).hexdigest()[:6]


def core_ns(lid: str) -> str:
    return f"mlplat-{lid}-core"


def host_ns(lid: str, name: str) -> str:
    return f"mlplat-{lid}-{name}"


def machine_link(lid: str) -> str:
    return f"mlab{lid}"


def _core_port(lid: str, index: int) -> str:
    return f"h{lid}{index}"[:15]


def address(network: str, index: int) -> str:
    return f"{network}.{HOST_OFFSET + index}"


def check_network(network: str) -> str:
    parts = network.split(".")
    if len(parts) != 3 or not all(p.isdigit() and 0 <= int(p) <= 255 for p in parts):
        raise RealNodesError(f"lab network {network!r}: give the first three octets of a private /24, e.g. {DEFAULT_NETWORK}")
    net = ipaddress.ip_network(f"{network}.0/24")
    if not net.is_private or net.is_loopback:
        raise RealNodesError(f"lab network {net}: use a private (RFC 1918) /24 that nothing on this machine routes")
    for bad, what in ((ipaddress.ip_network("10.96.0.0/12"), "the default service CIDR"),
                      (ipaddress.ip_network("10.244.0.0/16"), "the default pod CIDR")):
        if net.overlaps(bad):
            raise RealNodesError(f"lab network {net} overlaps {what} {bad}: pick another /24")
    return network


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RealNodesError(f"ip {' '.join(args)}: {r.stderr.strip()}")
    return r


def _netns_list() -> set[str]:
    r = _ip("netns", "list", check=False)
    return {ln.split()[0] for ln in r.stdout.splitlines() if ln.strip()}


def _machine_routes_overlap(network: str, lid: str) -> str | None:
    net = ipaddress.ip_network(f"{network}.0/24")
    r = _ip("-4", "-o", "addr", "show", check=False)
    for ln in r.stdout.splitlines():
        f = ln.split()
        if len(f) > 3 and f[1] != machine_link(lid):
            iface = ipaddress.ip_interface(f[3])
            if iface.network.overlaps(net):
                return f"{f[1]} has {f[3]}"
    return None


def _sysctl_in(ns: str, key: str, value: str) -> None:
    _ip("netns", "exec", ns, "sysctl", "-qw", f"{key}={value}")


def net_up(network: str, lid: str, hosts: list[tuple[int, str]]) -> None:
    """The bridge namespace, the machine's veth, and one namespace per host (index, name); what
    exists already is kept (``up`` twice is harmless)."""
    clash = _machine_routes_overlap(network, lid)
    if clash:
        raise RealNodesError(f"lab network {network}.0/24 is already used on this machine ({clash}): pick another "
                             f"(mlplat lab up --nodes real --network <a.b.c>)")
    existing = _netns_list()
    core = core_ns(lid)
    if core not in existing:
        _ip("netns", "add", core)
        _ip("-n", core, "link", "set", "lo", "up")
        _ip("-n", core, "link", "add", "br0", "type", "bridge")
        _ip("-n", core, "addr", "add", f"{network}.{GATEWAY_ADDRESS}/24", "dev", "br0")
        _ip("-n", core, "link", "set", "br0", "up")
        _sysctl_in(core, "net.ipv4.ip_forward", "0")
    link = machine_link(lid)
    if _ip("link", "show", link, check=False).returncode != 0:
        _ip("link", "add", link, "type", "veth", "peer", "name", "up0", "netns", core)
        _ip("-n", core, "link", "set", "up0", "master", "br0", "up")
        _ip("addr", "add", f"{network}.{MACHINE_ADDRESS}/24", "dev", link)
        _ip("link", "set", link, "up")
    for index, name in hosts:
        ns = host_ns(lid, name)
        if ns in existing:
            continue
        _ip("netns", "add", ns)
        port = _core_port(lid, index)
        _ip("-n", core, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("-n", core, "link", "set", port, "master", "br0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "addr", "add", f"{address(network, index)}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "route", "add", "default", "via", f"{network}.{GATEWAY_ADDRESS}")
        # kubeadm's preflight wants forwarding on, and pods on the CNI bridge need it.
        _sysctl_in(ns, "net.ipv4.ip_forward", "1")


def net_down(lid: str) -> None:
    for ns in sorted(_netns_list()):
        if ns.startswith(f"mlplat-{lid}-"):
            _ip("netns", "del", ns, check=False)
    _ip("link", "del", machine_link(lid), check=False)


# -- cgroups ---------------------------------------------------------------------------------------

def hierarchies() -> list[tuple[Path, str, str]]:
    """(mount point, fstype, options) of every cgroup hierarchy mounted on the machine."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        pre, _, post = line.partition(" - ")
        f = pre.split()
        fstype, _src, opts = (post.split() + ["", "", ""])[:3]
        if fstype in ("cgroup", "cgroup2") and f[3] == "/":
            out.append((Path(f[4]), fstype, opts))
    return out


def cgroup_dirs(lid: str, name: str | None = None) -> list[Path]:
    rel = Path(CGROUP_BASE) / lid / (name or "")
    return [mp / rel for mp, _t, _o in hierarchies()]


def cgroup_up(lid: str, name: str) -> list[Path]:
    """Create the host's cgroup in every hierarchy (cpuset values copied down each level)."""
    made = []
    for mp, _t, _o in hierarchies():
        d = mp
        for part in (CGROUP_BASE, lid, name):
            parent, d = d, d / part
            if not d.is_dir():
                d.mkdir()
            if mp.name == "cpuset":
                for f in ("cpuset.cpus", "cpuset.mems"):
                    if not (d / f).read_text().strip():
                        (d / f).write_text((parent / f).read_text())
        made.append(d)
    return made


def _rmdir_tree(d: Path) -> list[str]:
    """Remove a cgroup directory bottom-up (only empty cgroups can go); return what stayed."""
    left = []
    if not d.is_dir():
        return left
    for child in sorted((p for p in d.iterdir() if p.is_dir()), reverse=True):
        left += _rmdir_tree(child)
    try:
        d.rmdir()
    except OSError as e:
        left.append(f"{d}: {e.strerror}")
    return left


def cgroup_down(lid: str) -> list[str]:
    left = []
    for mp, _t, _o in hierarchies():
        left += _rmdir_tree(mp / CGROUP_BASE / lid)
        with contextlib.suppress(OSError):
            (mp / CGROUP_BASE).rmdir()  # only when no other lab uses it
    return left


DATA_POINT = "/run/mlplat-data"


def mount_lines(data: Path, passthrough: list[Path] = ()) -> tuple[list[str], list[str]]:
    """Shell lines (inside the host's new mount namespace) that give a real-node host its real
    directories, sysfs, cgroup mounts and shared propagation: (early: before the overlays and the
    /tmp tmpfs cover the data folder's path; late: after the overlays).

    `passthrough`: the machine's folders the host must see as they are now, not through its
    copy-on-write overlay (the lab's build cache: an overlay may keep serving a file's old content
    after the machine replaced it, e.g. a rebuilt image archive), bound read-only at their own path."""
    early = [f"mkdir -p {DATA_POINT} " + " ".join(str(data / r.replace("/", "-")) for r in BIND_DIRS),
             f"mount --bind {data} {DATA_POINT}"]
    lines = []
    for i, src in enumerate(passthrough):
        stash = f"/run/mlplat-pass{i}"
        early += [f"mkdir -p {stash} {src}", f"mount --bind {src} {stash}"]
        lines += [f"mkdir -p {src} && mount --bind {stash} {src} && mount -o remount,bind,ro {src} && umount {stash}"]
    for rel in BIND_DIRS:
        lines.append(f"mkdir -p /{rel} && mount --bind {DATA_POINT}/{rel.replace('/', '-')} /{rel}")
    # /lib/modules: kube-proxy's DaemonSet mounts it; the machine has none (no loadable modules).
    lines.append("mkdir -p /usr/lib/modules")
    lines.append("mount -t sysfs sysfs /sys")
    lines.append("mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup")
    for mp, fstype, opts in hierarchies():
        sub = mp.relative_to(CGROUP_ROOT) if mp != CGROUP_ROOT else Path(".")
        keep = ",".join(o for o in opts.split(",") if o not in ("rw", "ro", "relatime", "nosuid", "nodev", "noexec"))
        lines.append(f"mkdir -p /sys/fs/cgroup/{sub} && mount -t {fstype} -o {keep or 'rw'} cgroup /sys/fs/cgroup/{sub}")
    lines.append("mount --make-rshared /")
    return early, lines


# -- machine-wide sysctls --------------------------------------------------------------------------

def _sysctl_path(key: str) -> Path:
    return Path("/proc/sys") / key.replace(".", "/")


def read_sysctls() -> dict[str, str]:
    out = {}
    for k in MACHINE_SYSCTLS:
        with contextlib.suppress(OSError):
            out[k] = _sysctl_path(k).read_text().strip()
    return out


def record_sysctls(state_dir: Path) -> dict[str, str]:
    """Record the machine-wide values once (a second ``up`` must not record the kubelet's)."""
    p = Path(state_dir) / SYSCTL_FILE
    if p.is_file():
        return json.loads(p.read_text())
    values = read_sysctls()
    p.write_text(json.dumps(values, indent=1) + "\n")
    return values


def restore_sysctls(state_dir: Path) -> dict[str, tuple[str, str]]:
    """Write back the recorded values; returns {key: (was, restored)} for what changed."""
    p = Path(state_dir) / SYSCTL_FILE
    if not p.is_file():
        return {}
    recorded = json.loads(p.read_text())
    changed = {}
    for k, v in recorded.items():
        cur = _sysctl_path(k).read_text().strip()
        if cur != v:
            _sysctl_path(k).write_text(v + "\n")
            changed[k] = (cur, v)
    p.unlink()
    return changed


# -- what could outlive a lab -----------------------------------------------------------------------

def _layers_of(state_dir: Path) -> Path | None:
    """The hosts' overlay layers folder recorded in the lab's state file (see mlplat.lab.hosts)."""
    p = state_dir / "lab-hosts.json"
    try:
        return Path(json.loads(p.read_text())["layers"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def leftovers(state_dir: Path, recorded: dict[str, str] | None = None) -> dict[str, list[str]]:
    """Everything of this lab that is still there: network namespaces, links, cgroup directories,
    CNI leases, and (given the values recorded before the lab started) machine sysctls that differ.
    Processes and mounts: :func:`mlplat.lab.hosts.lab_processes` and ``lab_mounts``."""
    lid = lab_id(state_dir)
    out: dict[str, list[str]] = {}
    out["netns"] = sorted(ns for ns in _netns_list() if ns.startswith(f"mlplat-{lid}-"))
    out["links"] = [machine_link(lid)] if _ip("link", "show", machine_link(lid), check=False).returncode == 0 else []
    out["cgroups"] = [str(d) for d in cgroup_dirs(lid) if d.exists()]
    # The CNI's IP reservations (host-local) of pods that no longer run, in the hosts' /var.
    layers = _layers_of(Path(state_dir))
    out["cni"] = sorted(str(p) for p in layers.glob("*/upper/var/lib/cni") if p.exists()) if layers else []
    if recorded is not None:
        now = read_sysctls()
        out["sysctls"] = [f"{k}={now.get(k)} (was {v})" for k, v in recorded.items() if now.get(k) != v]
    return out
