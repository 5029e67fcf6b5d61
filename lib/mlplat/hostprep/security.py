"""SELinux (permissive, disabled, or kept) and the host firewall (the Kubernetes ports opened,
the firewall disabled, or kept), as ``host_prep.selinux`` and ``host_prep.firewall`` say.

Ports (kubeadm's "Ports and Protocols" page, plus flannel's VXLAN): control plane 6443, 2379-2380,
10250, 10257, 10259/tcp; every node 10250, 10256/tcp and NodePorts 30000-32767/tcp; flannel
8472/udp.
"""

from __future__ import annotations

import re

from .base import Outcome, Run, Target, WriteFile, converged, have, skip

SELINUX_CONFIG = "/etc/selinux/config"
CONTROL_PLANE_PORTS = ["6443/tcp", "2379-2380/tcp", "10250/tcp", "10257/tcp", "10259/tcp"]
NODE_PORTS = ["10250/tcp", "10256/tcp", "30000-32767/tcp"]
CNI_PORTS = {"flannel": ["8472/udp"], "none": []}


def ports_for(t: Target) -> list[str]:
    ports: list[str] = []
    if "control-plane" in t.host.roles:
        ports += CONTROL_PLANE_PORTS
    ports += NODE_PORTS + CNI_PORTS.get(t.params.kubernetes.cni, [])
    return list(dict.fromkeys(ports))


def set_selinux_config(text: str, mode: str) -> str:
    """/etc/selinux/config with ``SELINUX=<mode>`` (the line replaced, or added when missing)."""
    if re.search(r"^SELINUX=", text, re.M):
        return re.sub(r"^SELINUX=.*$", f"SELINUX={mode}", text, flags=re.M)
    return text + ("" if text.endswith("\n") or not text else "\n") + f"SELINUX={mode}\n"


def plan_selinux(t: Target) -> Outcome:
    want = t.params.host_prep.selinux
    if want == "keep":
        return skip("host_prep.selinux is keep: SELinux left as it is")
    cfg = t.remote.read(SELINUX_CONFIG)
    enforce = t.remote.run("getenforce 2>/dev/null").stdout.strip()
    if cfg is None and not enforce:
        return skip("no SELinux on this host (no /etc/selinux/config, no getenforce)"
                    + ("; the Debian family uses AppArmor, which Kubernetes does not need changed" if t.debian else ""))
    actions = []
    warnings = []
    m = re.search(r"^SELINUX=(\S+)", cfg or "", re.M)
    configured = m.group(1) if m else "(unset)"
    if configured != want:
        actions.append(WriteFile(SELINUX_CONFIG, set_selinux_config(cfg or "", want), cfg, backup=True))
    if enforce == "Enforcing":
        actions.append(Run("setenforce 0", "switch SELinux to permissive now"))
    if want == "disabled" and enforce in ("Enforcing", "Permissive"):
        warnings.append("SELinux is fully disabled only after a reboot (permissive until then)")
        t.state["reboot_reason"] = t.state.get("reboot_reason") or "SELinux disabled in its config"
    msg = f"running {enforce or 'unknown'}, configured {configured}"
    if not actions:
        return converged(msg, warnings)
    return Outcome(actions=actions, message=msg, warnings=warnings)


def parse_firewalld_ports(text: str) -> set[str]:
    return set(text.split())


def parse_ufw_status(text: str) -> tuple[bool, set[str]]:
    """``ufw status``: (active, allowed rules like '6443/tcp')."""
    active = bool(re.search(r"^Status:\s+active", text, re.M))
    allowed = set()
    for line in text.splitlines():
        m = re.match(r"^(\S+)\s+ALLOW", line.strip())
        if m and "(v6)" not in line:
            allowed.add(m.group(1).replace(":", "-"))
    return active, allowed


def plan_firewall(t: Target) -> Outcome:
    want = t.params.host_prep.firewall
    if want == "keep":
        return skip("host_prep.firewall is keep: the firewall left as it is")
    ports = ports_for(t)
    if have(t, "firewall-cmd"):
        running = t.remote.run("firewall-cmd --state 2>&1").stdout.strip() == "running"
        if want == "disabled":
            enabled = t.remote.run("systemctl is-enabled firewalld 2>/dev/null").stdout.strip() == "enabled"
            if running or enabled:
                return Outcome(actions=[Run("systemctl disable --now firewalld", "stop and disable firewalld")],
                               message=f"firewalld {'running' if running else 'enabled'}")
            return converged("firewalld stopped and disabled")
        if not running:
            return converged("firewalld is not running: nothing to open",
                             ["if firewalld is started later, rerun this step to open the Kubernetes ports"])
        open_ = parse_firewalld_ports(t.remote.run("firewall-cmd --permanent --list-ports").stdout)
        missing = [p for p in ports if p not in open_]
        if not missing:
            return converged(f"firewalld allows {' '.join(ports)}")
        cmd = " && ".join([f"firewall-cmd --permanent --add-port={p}" for p in missing] + ["firewall-cmd --reload"])
        return Outcome(actions=[Run(cmd, f"open {' '.join(missing)} in firewalld")], message="firewalld running")
    if have(t, "ufw"):
        active, allowed = parse_ufw_status(t.remote.run("ufw status 2>&1").stdout)
        if want == "disabled":
            if active:
                return Outcome(actions=[Run("ufw disable", "disable ufw")], message="ufw active")
            return converged("ufw inactive")
        if not active:
            return converged("ufw is inactive: nothing to open")
        missing = [p for p in ports if p not in allowed]
        if not missing:
            return converged(f"ufw allows {' '.join(ports)}")
        cmd = " && ".join(f"ufw allow {p.replace('-', ':')}" for p in missing)
        return Outcome(actions=[Run(cmd, f"open {' '.join(missing)} in ufw")], message="ufw active")
    return converged("no host firewall (firewalld or ufw) installed: nothing to open")
