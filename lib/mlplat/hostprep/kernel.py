"""Kernel modules (``overlay``, ``br_netfilter``: now and at boot) and the sysctls Kubernetes needs
(bridged traffic through iptables, IPv4 forwarding), in ``/etc/modules-load.d/k8s.conf`` and
``/etc/sysctl.d/99-kubernetes.conf``.
"""

from __future__ import annotations

import shlex

from .base import Outcome, Run, Target, converged, file_action

MODULES = ("overlay", "br_netfilter")
MODULES_FILE = "/etc/modules-load.d/k8s.conf"
SYSCTL_FILE = "/etc/sysctl.d/99-kubernetes.conf"
SYSCTLS = {
    "net.bridge.bridge-nf-call-iptables": "1",
    "net.bridge.bridge-nf-call-ip6tables": "1",
    "net.ipv4.ip_forward": "1",
}
HEADER = "# Written by mlplat (10_host_prep, kernel): what Kubernetes needs of this kernel.\n"

# A module is available when the kernel shows it, whether loaded or built in.
_PRESENT = {
    "overlay": "grep -qw overlay /proc/filesystems || [ -d /sys/module/overlay ]",
    "br_netfilter": "[ -d /sys/module/br_netfilter ] || [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]",
}


def modules_conf() -> str:
    return HEADER + "".join(f"{m}\n" for m in MODULES)


def sysctl_conf() -> str:
    return HEADER + "".join(f"{k} = {v}\n" for k, v in SYSCTLS.items())


def parse_sysctl(text: str) -> dict[str, str]:
    """``sysctl key...`` output (``key = value`` lines; errors ignored)."""
    out = {}
    for line in text.splitlines():
        if " = " in line:
            k, v = line.split(" = ", 1)
            out[k.strip()] = v.strip()
    return out


def plan_modules(t: Target) -> Outcome:
    """overlay and br_netfilter: loaded now (modprobe) and listed for boot (modules-load.d)."""
    actions = file_action(t, MODULES_FILE, modules_conf())
    missing = [m for m in MODULES if not t.remote.run(_PRESENT[m]).ok]
    notes = []
    warnings = []
    if missing:
        tree = t.remote.run(f"[ -d /lib/modules/{shlex.quote(t.kernel)} ]").ok
        if tree and not _may_load_modules(t):
            # A container or lab host: the kernel is the machine's, and it is not ours to change.
            warnings.append(f"cannot load {', '.join(missing)} now: no CAP_SYS_MODULE here (a container or lab "
                            "host sharing another machine's kernel); the modules-load.d file loads them at boot")
        elif tree:
            actions += [Run(f"modprobe {m}", f"load {m}") for m in missing]
        else:
            # No module tree for this kernel: a container, or a kernel whose modules are not installed.
            warnings.append(f"cannot load {', '.join(missing)} now: /lib/modules/{t.kernel} is absent (no kernel "
                            "module loader here); the modules-load.d file loads them at the next boot")
    present = [m for m in MODULES if m not in missing]
    if present:
        notes.append(f"{', '.join(present)} available now")
    if not actions:
        return converged("; ".join(notes + [f"{MODULES_FILE} lists {', '.join(MODULES)}"]), warnings)
    return Outcome(actions=actions, message="; ".join(notes), warnings=warnings)


def plan_sysctl(t: Target) -> Outcome:
    """The sysctls in 99-kubernetes.conf, and their running values (sysctl -p when they differ)."""
    actions = file_action(t, SYSCTL_FILE, sysctl_conf())
    current = parse_sysctl(t.remote.run("sysctl " + " ".join(SYSCTLS) + " 2>&1").stdout)
    differ = {k: current.get(k, "(absent)") for k, v in SYSCTLS.items() if current.get(k) != v}
    warnings = []
    if differ and not t.remote.run("[ -w /proc/sys/net/ipv4/ip_forward ]").ok:
        # Read-only /proc/sys: a container or lab host sharing another machine's kernel.
        warnings.append("cannot set " + ", ".join(differ) + " now: /proc/sys is read-only here (a container or lab "
                        f"host); {SYSCTL_FILE} applies them at boot")
        differ = {}
    if differ:
        actions.append(Run(f"sysctl -p {SYSCTL_FILE}",
                           "set " + ", ".join(f"{k}={SYSCTLS[k]} (now {v})" for k, v in differ.items())))
    if not actions:
        return converged(f"{SYSCTL_FILE} sets " + ", ".join(f"{k}={v}" for k, v in SYSCTLS.items()), warnings)
    return Outcome(actions=actions, warnings=warnings)


CAP_SYS_MODULE = 16


def _may_load_modules(t: Target) -> bool:
    """Whether this host's processes may load kernel modules (CAP_SYS_MODULE in the bounding set)."""
    out = t.remote.run("grep '^CapBnd:' /proc/self/status").stdout.split()
    try:
        return bool(int(out[-1], 16) >> CAP_SYS_MODULE & 1)
    except (IndexError, ValueError):
        return True
