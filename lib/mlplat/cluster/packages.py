"""Kubernetes packages on the hosts: the per-minor pkgs.k8s.io repository (or a mirror of it) and
pinned kubelet, kubeadm and kubectl, held at that version.

Since 2023-09 packages live only on ``https://pkgs.k8s.io/core:/stable:/v1.XX/{deb,rpm}/``, one
repository per minor [versions.md 3]; the legacy apt.kubernetes.io / packages.cloud.google.com
repositories are frozen and gone. ``mirrors.kubernetes`` replaces the base URL: either a mirror
with the same layout (``https://mirror.example/kubernetes`` ->
``https://mirror.example/kubernetes/core:/stable:/v1.34/deb/``), or a template naming ``{minor}``
(``v1.34``) and ``{kind}`` (``deb``/``rpm``) for mirrors that flatten the path, e.g.
``https://mirrors.aliyun.com/kubernetes-new/core/stable/{minor}/{kind}/``.

Everything is a :class:`~mlplat.cluster.kubeadm.HostStep`: a read-only probe (are the pinned
versions installed?), the repository file(s), and the commands. The phase runs them over a HostPool.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..params.schema import Host, Params
from ..params.versions import minor
from .kubeadm import HostStep, PlanFile

UPSTREAM = "https://pkgs.k8s.io"
PACKAGES = ("kubelet", "kubeadm", "kubectl")
APT_KEYRING = "/etc/apt/keyrings/kubernetes-apt-keyring.gpg"
APT_LIST = "/etc/apt/sources.list.d/kubernetes.list"
YUM_REPO = "/etc/yum.repos.d/kubernetes.repo"


def repo_url(params: Params, kind: str) -> str:
    """The repository base URL for this site's Kubernetes minor; ``kind`` is ``deb`` or ``rpm``."""
    m = "v%d.%d" % minor(params.versions.kubernetes)
    mirror = params.mirrors.kubernetes
    if mirror and "{minor}" in mirror:
        url = mirror.format(minor=m, kind=kind)
    else:
        base = (mirror or UPSTREAM).rstrip("/")
        url = f"{base}/core:/stable:/{m}/{kind}/"
    return url if url.endswith("/") else url + "/"


def family(params: Params, facts: dict | None = None) -> str:
    """``debian`` or ``rhel``: from the host's facts when known, else the params."""
    if facts and facts.get("os_family") in ("debian", "rhel"):
        return facts["os_family"]
    return params.os.family


def legacy_yum(params: Params, facts: dict | None = None) -> bool:
    """CentOS 7 has yum, not dnf."""
    ver = str((facts or {}).get("os_version") or params.os.version)
    distro = (facts or {}).get("os_id") or params.os.distro
    return distro == "centos" and ver.split(".")[0] == "7"


def deb_version(params: Params) -> str:
    """The Debian package version on pkgs.k8s.io (``1.34.4-1.1``); ``*`` pins the upstream version
    whatever the package revision."""
    return params.versions.kubernetes.lstrip("vV") + "-*"


def apt_list(params: Params) -> str:
    return f"deb [signed-by={APT_KEYRING}] {repo_url(params, 'deb')} /\n"


def yum_repo(params: Params) -> str:
    url = repo_url(params, "rpm")
    return ("[kubernetes]\n"
            "name=Kubernetes\n"
            f"baseurl={url}\n"
            "enabled=1\n"
            "gpgcheck=1\n"
            f"gpgkey={url}repodata/repomd.xml.key\n"
            "# Held: only installed or upgraded with --disableexcludes=kubernetes (by 30_kubernetes).\n"
            "exclude=kubelet kubeadm kubectl cri-tools kubernetes-cni\n")


def probe_command(fam: str, version: str | None = None) -> str:
    """Read-only: print the installed version of each package (absent ones print nothing); with
    ``version``, exit 1 unless every package is installed at that upstream version."""
    if fam == "debian":
        q = ("dpkg-query -W -f='${Package} ${Version} ${db:Status-Status}\\n' " + " ".join(PACKAGES)
             + " 2>/dev/null")
    else:
        q = ("rpm -q --qf '%{NAME} %{VERSION}-%{RELEASE} installed\\n' " + " ".join(PACKAGES)
             + " 2>/dev/null | grep -v 'not installed'")
    if version is None:
        return q + "; true"
    v = re.escape(version.lstrip("vV"))
    return (f"out=$({q}); echo \"$out\"; for p in {' '.join(PACKAGES)}; do "
            f"echo \"$out\" | grep -q \"^$p {v}-[^ ]* installed$\" || exit 1; done")


@dataclass
class Installed:
    name: str
    version: str
    status: str


def parse_probe(text: str) -> dict[str, Installed]:
    """``dpkg-query -W -f='${Package} ${Version} ${db:Status-Status}'`` or the rpm equivalent
    (tabs or spaces) into name -> Installed (only packages whose status is ``installed``)."""
    out: dict[str, Installed] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "installed":
            out[parts[0]] = Installed(parts[0], parts[1], parts[2])
    return out


def upstream_version(pkg_version: str) -> str:
    """``1.34.4-1.1`` -> ``1.34.4``; ``1.34.4-150500.1.1`` -> ``1.34.4``; an epoch is dropped."""
    v = pkg_version.split(":", 1)[-1]
    return re.split(r"[-~+]", v, 1)[0]


def missing(params: Params, installed: dict[str, Installed]) -> list[str]:
    """Packages not installed at the pinned upstream version, as ``name (found X)`` texts."""
    want = params.versions.kubernetes.lstrip("vV")
    out = []
    for p in PACKAGES:
        got = installed.get(p)
        if got is None:
            out.append(f"{p} (not installed)")
        elif upstream_version(got.version) != want:
            out.append(f"{p} (found {upstream_version(got.version)})")
    return out


def install_step(params: Params, host: Host, facts: dict | None = None) -> HostStep:
    """Repository file(s), pinned install and hold for one host."""
    fam = family(params, facts)
    want = params.versions.kubernetes.lstrip("vV")
    if fam == "debian":
        key_url = repo_url(params, "deb") + "Release.key"
        cmds = [
            "apt-get update -q",
            "DEBIAN_FRONTEND=noninteractive apt-get install -y -q apt-transport-https ca-certificates curl gpg",
            "install -d -m 0755 /etc/apt/keyrings",
            f"curl -fsSL --max-time 60 {key_url} | gpg --dearmor --yes -o {APT_KEYRING}",
            "apt-get update -q",
            "apt-mark unhold " + " ".join(PACKAGES) + " >/dev/null 2>&1 || true",
            "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --allow-downgrades "
            + " ".join(f"'{p}={deb_version(params)}'" for p in PACKAGES),
            "apt-mark hold " + " ".join(PACKAGES),
        ]
        files = [PlanFile(APT_LIST, apt_list(params), mode=0o644)]
    else:
        tool = "yum" if legacy_yum(params, facts) else "dnf"
        cmds = [
            f"{tool} install -y " + " ".join(f"{p}-{want}" for p in PACKAGES) + " --disableexcludes=kubernetes",
        ]
        files = [PlanFile(YUM_REPO, yum_repo(params), mode=0o644)]
    cmds.append("if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then systemctl enable kubelet; "
                "else echo 'no systemd: kubelet not enabled (start it by other means)'; fi")
    return HostStep(host=host.name, step="packages | kubeadm kubelet kubectl",
                    why=f"Kubernetes {want} packages from {repo_url(params, 'deb' if fam == 'debian' else 'rpm')}, held",
                    probe=probe_command(fam, want), probe_means=f"kubelet, kubeadm and kubectl {want} installed",
                    files=files, commands=cmds, files_when_converged=True)


def remove_step(params: Params, host: Host, facts: dict | None = None) -> HostStep:
    """Remove the packages, the repository file and the key (teardown, when asked)."""
    fam = family(params, facts)
    if fam == "debian":
        cmds = ["apt-mark unhold " + " ".join(PACKAGES) + " >/dev/null 2>&1 || true",
                "DEBIAN_FRONTEND=noninteractive apt-get purge -y -q " + " ".join(PACKAGES) + " kubernetes-cni cri-tools || true",
                f"rm -f {APT_LIST} {APT_KEYRING}"]
        leftovers = f"{APT_LIST} {APT_KEYRING}"
    else:
        tool = "yum" if legacy_yum(params, facts) else "dnf"
        cmds = [f"{tool} remove -y " + " ".join(PACKAGES) + " kubernetes-cni cri-tools || true", f"rm -f {YUM_REPO}"]
        leftovers = YUM_REPO
    probe = (f"out=$({probe_command(fam)} | grep ' installed$'); echo \"$out\"; [ -z \"$out\" ] || exit 1; "
             f"for f in {leftovers}; do [ -e $f ] && exit 1; done; exit 0")
    return HostStep(host=host.name, step="packages | remove", why="remove the Kubernetes packages and their repository",
                    probe=probe, probe_means="no Kubernetes package or repository file on the host", commands=cmds)
