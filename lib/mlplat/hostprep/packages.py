"""Packages: what is installed (``dpkg-query`` / ``rpm -qa``), what the repositories offer
(``apt-cache policy``, ``dnf``/``yum list``), and installing, for both families.

Parsers are pure functions tested on recorded real outputs (``tests/fixtures/hostprep``).
The step functions here: base packages, and kernel headers matching ``uname -r``.
"""

from __future__ import annotations

import re
import shlex
from typing import Iterable, Optional

from .base import Outcome, Run, Target, converged, fail

# dpkg-query's format: the same columns as the recorded fixture (package, version, arch, status).
DPKG_FORMAT = r"${Package}\t${Version}\t${Architecture}\t${db:Status-Status}\n"
# rpm's format: name, epoch, version, release, install time, arch (as the recorded fixture).
RPM_FORMAT = r"%{NAME}\t%|EPOCH?{%{EPOCH}}:{0}|\t%{VERSION}\t%{RELEASE}\t%{INSTALLTIME}\t%{ARCH}\n"

APT_ENV = "DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=a"
APT_INSTALL = (f"{APT_ENV} apt-get -q -y -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "
               "install --no-install-recommends")

BASE_PACKAGES = {
    # kubeadm's preflight wants conntrack, socat and iptables; ethtool and kmod for modules and NICs.
    "debian": ["ca-certificates", "curl", "gnupg", "kmod", "iptables", "conntrack", "socat", "ethtool"],
    "el7": ["ca-certificates", "curl", "kmod", "iptables", "conntrack-tools", "socat", "ethtool", "yum-utils",
            "tar"],
    "el8": ["ca-certificates", "curl", "kmod", "iptables", "conntrack-tools", "socat", "ethtool",
            "dnf-plugins-core", "iproute-tc", "tar"],
    "el9": ["ca-certificates", "curl", "kmod", "iptables-nft", "conntrack-tools", "socat", "ethtool",
            "dnf-plugins-core", "iproute-tc", "tar"],
}


# -- parsers --------------------------------------------------------------------------------------

def parse_dpkg_query(text: str) -> dict[str, dict]:
    """``dpkg-query -W -f=DPKG_FORMAT`` as {package: {version, arch, status}}; only rows whose status
    is ``installed`` count as installed (``config-files`` means removed, config kept)."""
    out = {}
    for line in text.splitlines():
        f = line.split("\t")
        if len(f) >= 4 and f[0]:
            out[f[0]] = {"version": f[1], "arch": f[2], "status": f[3].strip()}
    return out


def dpkg_installed(text: str) -> dict[str, str]:
    return {k: v["version"] for k, v in parse_dpkg_query(text).items() if v["status"] == "installed"}


def parse_rpm_qa(text: str) -> dict[str, list[dict]]:
    """``rpm -qa --qf RPM_FORMAT`` as {name: [{epoch, version, release, arch}]} (several versions of
    kernel packages are normal). Tolerates space-separated rows (seen in real fixtures)."""
    out: dict[str, list[dict]] = {}
    for line in text.splitlines():
        f = line.split("\t") if "\t" in line else line.split()
        if len(f) >= 6:
            out.setdefault(f[0], []).append({"epoch": f[1], "version": f[2], "release": f[3], "arch": f[5].strip()})
    return out


def rpm_evr(p: dict) -> str:
    return f"{p['version']}-{p['release']}"


def parse_apt_policy(text: str) -> dict[str, dict]:
    """``apt-cache policy PKG...`` as {package: {installed, candidate, versions: [..]}}; installed and
    candidate are None for ``(none)``. Also reads a grep-filtered excerpt (no package header): its
    rows land under the key ``""``."""
    out: dict[str, dict] = {}
    cur = ""
    for line in text.splitlines():
        m = re.match(r"^(\S[^:\s]*):\s*$", line)
        if m:
            cur = m.group(1)
            out[cur] = {"installed": None, "candidate": None, "versions": []}
            continue
        entry = out.setdefault(cur, {"installed": None, "candidate": None, "versions": []})
        s = line.strip()
        if s.startswith("Installed:"):
            v = s.split(":", 1)[1].strip()
            entry["installed"] = None if v == "(none)" else v
        elif s.startswith("Candidate:"):
            v = s.split(":", 1)[1].strip()
            entry["candidate"] = None if v == "(none)" else v
        else:
            vm = re.match(r"^(?:\*\*\*\s+)?(\S+)\s+(-?\d+)$", s)
            if vm and not s.startswith("Version table"):
                entry["versions"].append(vm.group(1))
    return out


def parse_yum_list(text: str) -> list[dict]:
    """``yum list`` / ``dnf list`` rows (name.arch, version-release, repo), headers and noise skipped;
    the section ("Installed Packages" / "Available Packages") is kept per row. Rows wrapped on two
    lines (long names) are joined."""
    rows = []
    section = ""
    pending = None
    for line in text.splitlines():
        s = line.strip()
        if not s:
            continue
        if s in ("Installed Packages", "Available Packages", "Extra Packages") or s.endswith("Packages"):
            section = s.split()[0].lower()
            continue
        f = s.split()
        if pending is not None:
            f = pending + f
            pending = None
        if len(f) == 1 and "." in f[0]:
            pending = f
            continue
        if len(f) >= 3 and "." in f[0] and re.match(r"^[\w:.+~-]+$", f[1]):
            name, _, arch = f[0].rpartition(".")
            rows.append({"name": name, "arch": arch, "evr": f[1], "repo": f[2], "section": section})
    return rows


def parse_containerd_version(text: str) -> Optional[str]:
    """The version of ``containerd --version`` ("containerd github.com/containerd/containerd v1.7.7 <rev>"
    or Debian's "... 1.6.20~ds1 1.6.20~ds1-1+deb12u3"): '1.7.7', '1.6.20'."""
    m = re.search(r"containerd\s+\S+\s+v?(\d+\.\d+\.\d+)", text)
    return m.group(1) if m else None


# -- probes -----------------------------------------------------------------------------------------

def installed(t: Target, names: Iterable[str]) -> dict[str, str]:
    """Which of `names` are installed, with their versions."""
    names = list(names)
    if not names:
        return {}
    if t.debian:
        r = t.remote.run(f"dpkg-query -W -f='{DPKG_FORMAT}' {' '.join(map(shlex.quote, names))} 2>/dev/null")
        have = dpkg_installed(r.stdout)
    else:
        r = t.remote.run(f"rpm -qa --qf '{RPM_FORMAT}'")
        have = {k: rpm_evr(v[-1]) for k, v in parse_rpm_qa(r.stdout).items()}
    return {n: have[n] for n in names if n in have}


def install_command(t: Target, names: Iterable[str]) -> str:
    """The command that installs `names` (apt: after finishing an interrupted dpkg run)."""
    pkgs = " ".join(shlex.quote(n) for n in names)
    if t.debian:
        # A host that died mid-install leaves dpkg half-configured; finish that first.
        return f"{APT_ENV} dpkg --configure -a && {APT_INSTALL} {pkgs}"
    return f"{t.pkg} -y install {pkgs}"


def refresh_command(t: Target) -> str:
    if t.debian:
        return f"{APT_ENV} apt-get -q update"
    return "yum -q makecache fast" if t.el7 else "dnf -q makecache"


def ensure_packages(t: Target, names: list[str], why: str = "") -> tuple[list[Run], list[str]]:
    """([Run install], missing) for the packages of `names` that are not installed."""
    have = installed(t, names)
    missing = [n for n in names if n not in have]
    if not missing:
        return [], []
    return [Run(install_command(t, missing), why or f"install {' '.join(missing)}", timeout=1800)], missing


def base_packages(t: Target) -> list[str]:
    key = "debian" if t.debian else f"el{t.major if t.major in (7, 8, 9) else 9}"
    return BASE_PACKAGES[key] + list(t.params.host_prep.extra_packages)


# -- steps --------------------------------------------------------------------------------------

def plan_base(t: Target) -> Outcome:
    """Base packages (conntrack, socat, iptables, curl...) plus host_prep.extra_packages."""
    if t.family not in ("rhel", "debian"):
        return fail(f"unsupported OS family {t.family!r} (facts: {t.facts.get('os_pretty')})")
    names = base_packages(t)
    actions, missing = ensure_packages(t, names)
    if not actions:
        return converged(f"{len(names)} base packages installed")
    return Outcome(actions=actions, message=f"missing: {' '.join(missing)}")


def headers_package(t: Target) -> str:
    return f"linux-headers-{t.kernel}" if t.debian else f"kernel-devel-{t.kernel}"


def plan_kernel_headers(t: Target) -> Outcome:
    """Headers (Debian: linux-headers-$(uname -r); RHEL: kernel-devel-$(uname -r)) for DKMS builds of
    the NVIDIA driver. When the repositories lack that exact version: a clear error on GPU hosts, a
    warning elsewhere (only the driver build needs them)."""
    k = t.kernel
    if not k:
        return fail("no kernel version in the facts (uname -r)")
    pkg = headers_package(t)
    if t.debian:
        r = t.remote.run(f"dpkg-query -W -f='{DPKG_FORMAT}' {shlex.quote(pkg)} 2>/dev/null")
        if pkg in dpkg_installed(r.stdout):
            return converged(f"{pkg} installed")
        pol = parse_apt_policy(t.remote.run(f"apt-cache policy {shlex.quote(pkg)}").stdout).get(pkg)
        available = bool(pol and pol["candidate"])
        others = []
        if not available:
            near = t.remote.run("apt-cache pkgnames linux-headers- 2>/dev/null | sort -V | tail -n 5").stdout.split()
            others = near
    else:
        # One listing, both sections: what is installed and what the enabled repositories offer.
        q = ("yum -q --showduplicates list kernel-devel 2>&1" if t.el7
             else "dnf -q --showduplicates list kernel-devel 2>&1")
        listed = [row for row in parse_yum_list(t.remote.run(q).stdout) if row["name"] == "kernel-devel"]
        have = [f"{row['evr']}.{row['arch']}" for row in listed if row["section"] == "installed"]
        if k in have:
            return converged(f"{pkg} installed")
        versions = [f"{row['evr']}.{row['arch']}" for row in listed if row["section"] != "installed"]
        available = k in versions
        others = versions[-5:]
        if have:
            others = [f"installed: kernel-devel {', '.join(have)}"] + others
    if available:
        return Outcome(actions=[Run(install_command(t, [pkg]), f"install {pkg}", timeout=1800)],
                       message=f"{pkg} available, not installed")
    why = (f"kernel headers mismatch: the enabled repositories have no {pkg} for the running kernel {k}"
           + (f" (they offer: {', '.join(others)})" if others else "")
           + "; update the kernel to a version the repositories carry and reboot, or add the repository "
             "(e.g. a vault) that has this exact version")
    if t.gpus:
        return fail(why)
    return converged(f"{pkg} not installed", warnings=[why + "; not needed on this host: it has no NVIDIA GPU, "
                                                       "and only the driver's DKMS build uses the headers"])
