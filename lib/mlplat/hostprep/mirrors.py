"""Package mirrors: apt sources (Debian, Ubuntu), dnf/yum ``.repo`` files (Rocky, Alma, RHEL), and the
CentOS 7 vault (CentOS 7 is end of life: ``mirrorlist.centos.org`` is gone, only the vault serves it).

The files are rendered from the params; a host whose files already match is left alone. A
repository refresh (``apt-get update``, ``dnf makecache``) follows every change.
"""

from __future__ import annotations

import re
import shlex

from .base import Outcome, Run, Target, WriteFile, converged, fail, file_action, skip
from .packages import refresh_command

CENTOS7_EOL = ("CentOS 7 reached its end of life on 2024-06-30: no updates or security fixes, and its "
               "packages come only from the vault (a single, slow server: mirror it locally for many hosts); "
               "plan the move to Rocky/Alma 9 or Ubuntu 22.04/24.04")
DEBIAN_SOURCES = "/etc/apt/sources.list.d/debian.sources"
UBUNTU_SOURCES = "/etc/apt/sources.list.d/ubuntu.sources"
MLPLAT_REPO = "/etc/yum.repos.d/mlplat-mirror.repo"
CENTOS7_BASE = "/etc/yum.repos.d/CentOS-Base.repo"
EPEL_REPO = "/etc/yum.repos.d/epel.repo"
HEADER = "# Written by mlplat (10_host_prep, mirrors): edit params mirrors.* and rerun instead.\n"

GPG_KEYS = {
    "rocky": "file:///etc/pki/rpm-gpg/RPM-GPG-KEY-Rocky-{major}",
    "almalinux": "file:///etc/pki/rpm-gpg/RPM-GPG-KEY-AlmaLinux-{major}",
    "rhel": "file:///etc/pki/rpm-gpg/RPM-GPG-KEY-redhat-release",
    "centos": "file:///etc/pki/rpm-gpg/RPM-GPG-KEY-CentOS-{major}",
}


def os_release(t: Target) -> dict[str, str]:
    """The host's /etc/os-release keys (cached per host)."""
    if "os_release" not in t.state:
        from ..hosts.facts import parse_os_release

        text = t.remote.read("/etc/os-release") or t.remote.read("/usr/lib/os-release") or ""
        t.state["os_release"] = parse_os_release(text)
    return t.state["os_release"]


def codename(t: Target) -> str:
    osr = os_release(t)
    return osr.get("VERSION_CODENAME") or osr.get("UBUNTU_CODENAME") or ""


# -- renderers (pure) -------------------------------------------------------------------------------

def debian_sources(mirror: str, codename: str) -> str:
    """deb822 sources for Debian: the archive from `mirror`, security from the mirror's
    ``-security`` twin (``…/debian`` -> ``…/debian-security``, as regional mirrors lay it out;
    otherwise ``debian-security`` beside the archive's folder)."""
    m = mirror.rstrip("/")
    security = m + "-security" if m.endswith("/debian") else m.rsplit("/", 1)[0] + "/debian-security"
    comps = "main contrib non-free non-free-firmware"
    return (HEADER +
            f"Types: deb\nURIs: {m}\nSuites: {codename} {codename}-updates\nComponents: {comps}\n"
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
            f"Types: deb\nURIs: {security}\nSuites: {codename}-security\nComponents: {comps}\n"
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")


def ubuntu_sources(mirror: str, codename: str) -> str:
    """deb822 sources for Ubuntu (22.04 reads them too): every pocket from `mirror`."""
    m = mirror.rstrip("/")
    return (HEADER +
            f"Types: deb\nURIs: {m}\nSuites: {codename} {codename}-updates {codename}-backports {codename}-security\n"
            "Components: main restricted universe multiverse\n"
            "Signed-By: /usr/share/keyrings/ubuntu-archive-keyring.gpg\n")


def comment_out_sources_list(text: str) -> str:
    """/etc/apt/sources.list with every active ``deb`` line commented (the deb822 file replaces them)."""
    out = []
    for line in text.splitlines(keepends=True):
        if re.match(r"^\s*deb(-src)?\s", line):
            out.append("# disabled by mlplat (see sources.list.d): " + line)
        else:
            out.append(line)
    return "".join(out)


def rhel_mirror_repo(t: Target, baseos: str | None, appstream: str | None) -> str:
    key = GPG_KEYS.get(t.os_id, GPG_KEYS["rocky"]).format(major=t.major)
    parts = [HEADER]
    for rid, url in (("baseos", baseos), ("appstream", appstream)):
        if url:
            parts.append(f"[mlplat-{rid}]\nname=mlplat mirror: {rid} ({t.os_id} {t.major})\nbaseurl={url}\n"
                         f"enabled=1\ngpgcheck=1\ngpgkey={key}\n\n")
    return "".join(parts).rstrip("\n") + "\n"


def centos7_base_repo(vault: str) -> str:
    """CentOS-Base.repo pointing at the vault (os, updates, extras); no mirrorlist."""
    v = vault.rstrip("/")
    key = "file:///etc/pki/rpm-gpg/RPM-GPG-KEY-CentOS-7"
    parts = [HEADER.rstrip("\n") + " CentOS 7 is end of life; this points at the vault.\n"]
    for rid, path, name in (("base", "os", "Base"), ("updates", "updates", "Updates"), ("extras", "extras", "Extras")):
        parts.append(f"[{rid}]\nname=CentOS-7 - {name} (vault)\nbaseurl={v}/{path}/$basearch/\n"
                     f"enabled=1\ngpgcheck=1\ngpgkey={key}\n\n")
    return "".join(parts).rstrip("\n") + "\n"


def epel_repo(epel: str, major: int) -> str:
    url = f"{epel.rstrip('/')}/{major}/$basearch/" if major == 7 else f"{epel.rstrip('/')}/{major}/Everything/$basearch/"
    return (HEADER + f"[epel]\nname=Extra Packages for Enterprise Linux {major} - $basearch\nbaseurl={url}\n"
            f"enabled=1\ngpgcheck=1\ngpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-EPEL-{major}\n")


def parse_repolist(text: str) -> list[str]:
    """Repository ids from ``yum repolist`` / ``dnf repolist`` (the first column after the
    ``repo id`` header; yum's ``/7Server/x86_64`` suffixes dropped)."""
    ids = []
    started = False
    for line in text.splitlines():
        if re.match(r"^\s*repo id\s", line):
            started = True
            continue
        if not started or not line.strip() or line.startswith("repolist:"):
            continue
        rid = line.split()[0].lstrip("!*")
        ids.append(rid.split("/")[0])
    return ids


VAULT_SED = ("sed -i -e 's|^mirrorlist=|#mirrorlist=|' "
             "-e 's|^#\\?baseurl=http://mirror.centos.org/centos/\\(7\\|\\$releasever\\)|baseurl={vault}|' {files}")


# -- the step -------------------------------------------------------------------------------------

def plan(t: Target) -> Outcome:
    """Point the package manager at the mirrors the params name (CentOS 7: always the vault)."""
    m = t.params.mirrors
    if t.debian:
        return _plan_apt(t, m.apt)
    if t.rhel:
        if t.el7:
            return _plan_centos7(t)
        return _plan_dnf(t)
    return fail(f"unsupported OS family {t.family!r}")


def _plan_apt(t: Target, mirror: str | None) -> Outcome:
    if not mirror:
        return skip("mirrors.apt is empty: the distribution's sources are kept")
    cn = codename(t)
    if not cn:
        return fail("no VERSION_CODENAME in /etc/os-release: cannot write apt sources")
    if t.os_id == "ubuntu":
        path, content = UBUNTU_SOURCES, ubuntu_sources(mirror, cn)
    else:
        path, content = DEBIAN_SOURCES, debian_sources(mirror, cn)
    actions = file_action(t, path, content, backup=True)
    old_list = t.remote.read("/etc/apt/sources.list")
    if old_list is not None:
        new_list = comment_out_sources_list(old_list)
        if new_list != old_list:
            actions.append(WriteFile("/etc/apt/sources.list", new_list, old_list, backup=True))
    if not actions:
        return converged(f"apt sources point at {mirror} ({cn})")
    actions.append(Run(refresh_command(t), "refresh the package lists", timeout=900))
    return Outcome(actions=actions, message=f"apt sources -> {mirror} ({cn})")


def _plan_dnf(t: Target) -> Outcome:
    m = t.params.mirrors
    actions = []
    notes = []
    if m.rhel_baseos or m.rhel_appstream:
        actions += file_action(t, MLPLAT_REPO, rhel_mirror_repo(t, m.rhel_baseos, m.rhel_appstream))
        enabled = parse_repolist(t.remote.run("dnf -q repolist --enabled 2>&1").stdout)
        replaced = [r for r in enabled if not r.startswith("mlplat-") and
                    ((m.rhel_baseos and re.search(r"baseos", r, re.I)) or
                     (m.rhel_appstream and re.search(r"appstream", r, re.I)))]
        if replaced:
            actions.append(Run(f"dnf config-manager --set-disabled {' '.join(replaced)}",
                               f"disable the distribution's {', '.join(replaced)} (the mirror replaces them)"))
        notes.append(f"BaseOS/AppStream from {m.rhel_baseos or '(distro)'} / {m.rhel_appstream or '(distro)'}")
    if m.epel:
        actions += file_action(t, EPEL_REPO, epel_repo(m.epel, t.major), backup=True)
        notes.append(f"EPEL from {m.epel}")
    if not notes:
        return skip("mirrors.rhel_baseos, rhel_appstream and epel are empty: the distribution's repositories are kept")
    if not actions:
        return converged("; ".join(notes))
    actions.append(Run(refresh_command(t), "refresh the repository metadata", timeout=900))
    return Outcome(actions=actions, message="; ".join(notes))


def _plan_centos7(t: Target) -> Outcome:
    m = t.params.mirrors
    vault = m.centos7_vault.rstrip("/")
    actions = file_action(t, CENTOS7_BASE, centos7_base_repo(vault), backup=True)
    # Other CentOS repo files (SCLo, ...) still naming the dead mirror list.
    r = t.remote.run("grep -l -E '^(mirrorlist=http://mirrorlist\\.centos\\.org|#?baseurl=http://mirror\\.centos\\.org)' "
                     "/etc/yum.repos.d/*.repo 2>/dev/null")
    others = [f for f in r.stdout.split() if f != CENTOS7_BASE]
    if others:
        actions.append(Run(VAULT_SED.format(vault=vault, files=" ".join(map(shlex.quote, others))),
                           f"point {', '.join(others)} at the vault"))
    if m.epel:
        actions += file_action(t, EPEL_REPO, epel_repo(m.epel, 7), backup=True)
    if not actions:
        return converged(f"yum points at the vault {vault}", warnings=[CENTOS7_EOL])
    actions.append(Run(refresh_command(t), "refresh the repository metadata", timeout=900))
    return Outcome(actions=actions, message=f"CentOS 7 -> vault {vault}", warnings=[CENTOS7_EOL])
