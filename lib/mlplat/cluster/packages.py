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

The real-node lab (``lab.nodes: real`` with ``lab.binaries_dir``) reaches no package repository:
there the step copies the lab-built kubeadm, kubelet and kubectl from that directory (visible on
every lab host) to ``/usr/bin`` and writes the two kubelet unit files the upstream packages
install (:func:`lab_install_step`); teardown removes them again (:func:`lab_remove_step`).
"""

from __future__ import annotations

import hashlib
import re
import shlex
from dataclasses import dataclass

from ..params.schema import Host, Params
from ..params.versions import minor
from . import nodes
from .kubeadm import HostStep, PlanFile, kubernetes_version

UPSTREAM = "https://pkgs.k8s.io"
PACKAGES = ("kubelet", "kubeadm", "kubectl")
APT_KEYRING = "/etc/apt/keyrings/kubernetes-apt-keyring.gpg"
APT_LIST = "/etc/apt/sources.list.d/kubernetes.list"
STEP = "packages | kubeadm kubelet kubectl"
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


def _query(fam: str) -> str:
    """The installed packages, one ``name version status`` line each (absent ones print nothing)."""
    if fam == "debian":
        return ("dpkg-query -W -f='${Package} ${Version} ${db:Status-Status}\\n' " + " ".join(PACKAGES)
                + " 2>/dev/null")
    return ("rpm -q --qf '%{NAME} %{VERSION}-%{RELEASE} installed\\n' " + " ".join(PACKAGES)
            + " 2>/dev/null | grep -v 'not installed'")


def probe_command(fam: str, version: str | None = None) -> str:
    """Read-only: print the installed version of each package (absent ones print nothing); with
    ``version``, exit 1 unless every package is installed at that upstream version."""
    q = _query(fam)
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


def install_steps(params: Params, host: Host, facts: dict | None = None) -> list[HostStep]:
    """What phase 30's packages step runs on one host, in order: on Debian/Ubuntu the repository's
    signing key first (:func:`key_step`), then :func:`install_step`."""
    first = [] if lab_binaries(params) or family(params, facts) != "debian" else [key_step(params, host)]
    return first + [install_step(params, host, facts)]


def key_step(params: Params, host: Host) -> HostStep:
    """Debian/Ubuntu: the repository's signing key, fetched before its list file exists (with a
    ``signed-by`` list whose keyring is missing, ``apt-get update`` fails: NO_PUBKEY, exit 100).
    ``apt-get update`` runs here only when curl or gpg must be installed first."""
    key_url = repo_url(params, "deb") + "Release.key"
    return HostStep(
        host=host.name, step="packages | repository key", why=f"the signing key of {repo_url(params, 'deb')}",
        probe=f"test -s {APT_KEYRING}", probe_means=f"{APT_KEYRING} present",
        commands=["if ! command -v curl >/dev/null || ! command -v gpg >/dev/null; then apt-get update -q && "
                  "DEBIAN_FRONTEND=noninteractive apt-get install -y -q apt-transport-https ca-certificates curl gpg; "
                  "fi",
                  "install -d -m 0755 /etc/apt/keyrings",
                  f"curl -fsSL --max-time 60 {key_url} | gpg --dearmor --yes -o {APT_KEYRING}"])


def install_step(params: Params, host: Host, facts: dict | None = None) -> HostStep:
    """Repository file, pinned install and hold for one host (Debian/Ubuntu: after :func:`key_step`;
    on the real-node lab: the copy of the lab-built binaries, :func:`lab_install_step`)."""
    if lab_binaries(params):
        return lab_install_step(params, host, facts)
    fam = family(params, facts)
    want = params.versions.kubernetes.lstrip("vV")
    if fam == "debian":
        cmds = [
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
    return HostStep(host=host.name, step=STEP,
                    why=f"Kubernetes {want} packages from {repo_url(params, 'deb' if fam == 'debian' else 'rpm')}, held",
                    probe=probe_command(fam, want), probe_means=f"kubelet, kubeadm and kubectl {want} installed",
                    files=files, commands=cmds, files_when_converged=True)


def remove_step(params: Params, host: Host, facts: dict | None = None) -> HostStep:
    """Remove the packages, the repository file and the key (teardown, when asked); on the
    real-node lab the copied binaries and unit files (:func:`lab_remove_step`)."""
    if lab_binaries(params):
        return lab_remove_step(params, host, facts)
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
    # A package removed but not purged (status config-files) is no longer installed.
    probe = (f"out=$({{ {_query(fam)}; }} | grep ' installed$'); echo \"$out\"; [ -z \"$out\" ] || exit 1; "
             f"for f in {leftovers}; do [ -e $f ] && exit 1; done; exit 0")
    return HostStep(host=host.name, step="packages | remove", why="remove the Kubernetes packages and their repository",
                    probe=probe, probe_means="no Kubernetes package or repository file on the host", commands=cmds)


# ---------------------------------------------------------------------------------------------
# The real-node lab: no package repository, the lab-built binaries copied instead
# ---------------------------------------------------------------------------------------------

BIN_DIR = "/usr/bin"
# Where the upstream packages put the kubelet's units: kubernetes/release
# cmd/krel/templates/latest/kubelet/kubelet.spec installs kubelet.service into %{_unitdir}, and
# .../kubeadm/kubeadm.spec installs 10-kubeadm.conf into %{_unitdir}/kubelet.service.d/; %{_unitdir}
# is /usr/lib/systemd/system for both the rpm and the deb (debbuild with systemd-deb-macros) builds.
UNIT_DIR = "/usr/lib/systemd/system"
KUBELET_UNIT = f"{UNIT_DIR}/kubelet.service"
KUBEADM_DROPIN = f"{UNIT_DIR}/kubelet.service.d/10-kubeadm.conf"


def lab_binaries(params: Params) -> str | None:
    """``lab.binaries_dir`` when this is the real-node lab that copies binaries, else None."""
    if nodes.real_lab(params) and params.lab.binaries_dir:
        return params.lab.binaries_dir.rstrip("/") or "/"
    return None


def kubelet_unit() -> str:
    """The kubelet's systemd unit, as the upstream kubelet package ships it: start the kubelet,
    restart it forever (kubeadm relies on that while the kubelet waits for its config)."""
    return ("[Unit]\n"
            "Description=kubelet: The Kubernetes Node Agent\n"
            "Documentation=https://kubernetes.io/docs/\n"
            "Wants=network-online.target\n"
            "After=network-online.target\n"
            "\n"
            "[Service]\n"
            f"ExecStart={BIN_DIR}/kubelet\n"
            "Restart=always\n"
            "StartLimitInterval=0\n"
            "RestartSec=10\n"
            "\n"
            "[Install]\n"
            "WantedBy=multi-user.target\n")


def kubeadm_dropin(fam: str) -> str:
    """The kubeadm drop-in of the upstream kubeadm package: the kubelet command line kubeadm
    expects, reading the flags file kubeadm init/join write and the site's override file
    (/etc/default/kubelet on Debian-family hosts, /etc/sysconfig/kubelet on RHEL-family ones)."""
    overrides = "/etc/default/kubelet" if fam == "debian" else "/etc/sysconfig/kubelet"
    return ("# Written by mlplat 30_kubernetes (the lab has no package repository); the same as the\n"
            "# kubeadm package's drop-in. kubeadm init/join write /var/lib/kubelet/kubeadm-flags.env.\n"
            "[Service]\n"
            'Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf '
            '--kubeconfig=/etc/kubernetes/kubelet.conf"\n'
            'Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"\n'
            "EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env\n"
            f"EnvironmentFile=-{overrides}\n"
            "ExecStart=\n"
            f"ExecStart={BIN_DIR}/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS "
            "$KUBELET_EXTRA_ARGS\n")


def lab_unit_files(params: Params, facts: dict | None = None) -> list[PlanFile]:
    return [PlanFile(KUBELET_UNIT, kubelet_unit(), mode=0o644),
            PlanFile(KUBEADM_DROPIN, kubeadm_dropin(family(params, facts)), mode=0o644)]


# Prints "version <binary> <vX.Y.Z>" for a binary path; each tool says its version differently.
_VERSION_FN = ("v() { case \"${1##*/}\" in "
               "kubeadm) \"$1\" version -o short 2>/dev/null;; "
               "kubelet) \"$1\" --version 2>/dev/null | awk '{print $2}';; "
               "kubectl) \"$1\" version --client 2>/dev/null | awk '/^Client Version:/{print $3}';; esac; }")


def lab_probe_command(src: str, dest: str = BIN_DIR) -> str:
    """Read-only: per binary, ``source-missing``, its ``version`` in ``src``, and whether the copy
    in ``dest`` is ``same`` or ``differs`` (byte for byte, ``cmp``); exit 0 only when all three
    are there and the same."""
    s, d = shlex.quote(src), shlex.quote(dest)
    return (f"{_VERSION_FN}; rc=0; for b in {' '.join(LAB_BINARIES)}; do "
            f"if [ ! -x {s}/$b ]; then echo \"source-missing $b\"; rc=1; continue; fi; "
            f"echo \"version $b $(v {s}/$b)\"; "
            f"if cmp -s {s}/$b {d}/$b; then echo \"same $b\"; else echo \"differs $b\"; rc=1; fi; "
            "done; exit $rc")


LAB_BINARIES = ("kubeadm", "kubelet", "kubectl")


@dataclass
class LabProbe:
    missing: list[str]
    versions: dict[str, str]
    same: list[str]
    differs: list[str]


def parse_lab_probe(text: str) -> LabProbe:
    out = LabProbe([], {}, [], [])
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "source-missing":
            out.missing.append(parts[1])
        elif len(parts) >= 2 and parts[0] == "version":
            out.versions[parts[1]] = parts[2] if len(parts) > 2 else ""
        elif len(parts) == 2 and parts[0] in ("same", "differs"):
            (out.same if parts[0] == "same" else out.differs).append(parts[1])
    return out


def lab_problems(params: Params, probe: LabProbe) -> list[str]:
    """What makes the lab's binaries unusable here: missing, or not the pinned version."""
    src = lab_binaries(params)
    want = kubernetes_version(params)
    out = [f"{src}/{b} is missing (build the lab binaries: mlplat lab build)" for b in probe.missing]
    for b, v in probe.versions.items():
        if v != want:
            out.append(f"{src}/{b} is {v or 'of unknown version'}, versions.kubernetes pins {want}")
    return out


def lab_install_step(params: Params, host: Host, facts: dict | None = None, dest: str = BIN_DIR) -> HostStep:
    """Copy the lab-built kubeadm, kubelet and kubectl to ``dest`` and write the kubelet units.

    The probe compares the copies byte for byte with the lab's, so a rerun changes nothing; a
    changed unit file alone is rewritten without copying again. The first command refuses sources
    of another version than ``versions.kubernetes`` before anything is copied."""
    src = lab_binaries(params)
    if src is None:
        raise ValueError("lab_install_step needs lab.nodes: real and lab.binaries_dir")
    want = kubernetes_version(params)
    s, d = shlex.quote(src), shlex.quote(dest)
    check = (f"{_VERSION_FN}; for b in {' '.join(LAB_BINARIES)}; do got=$(v {s}/$b); "
             f"[ \"$got\" = {want} ] || {{ echo \"{src}/$b is ${{got:-missing or unreadable}}, "
             f"versions.kubernetes pins {want}\" >&2; exit 1; }}; done")
    cmds = [check] + [f"install -m 0755 {s}/{b} {d}/{b}" for b in LAB_BINARIES]
    cmds.append("if command -v systemctl >/dev/null 2>&1; then systemctl daemon-reload && systemctl enable kubelet "
                "|| echo 'systemctl could not enable kubelet: start it by other means'; "
                "else echo 'no systemctl: kubelet not enabled (start it by other means)'; fi")
    return HostStep(host=host.name, step=STEP,
                    why=f"lab: no package repository; the lab-built {want} binaries from {src}",
                    probe=lab_probe_command(src, dest),
                    probe_means=f"lab: no package repository; the lab-built {want} kubeadm, kubelet and kubectl in "
                                f"{dest} equal those in {src}",
                    files=lab_unit_files(params, facts), commands=cmds, files_when_converged=True)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def lab_remove_probe(params: Params, facts: dict | None = None, dest: str = BIN_DIR) -> str:
    """Read-only: ``copied <path>`` for each file phase 30 put there (a binary identical to the
    lab's, a unit file with the content phase 30 writes); exit 0 when there is none."""
    src = shlex.quote(lab_binaries(params) or "/nonexistent")
    d = shlex.quote(dest)
    lines = [(f"for b in {' '.join(LAB_BINARIES)}; do "
              f"[ -e {d}/$b ] && cmp -s {src}/$b {d}/$b && echo \"copied {dest}/$b\"; done")]
    for f in lab_unit_files(params, facts):
        lines.append(f"[ -e {f.path} ] && [ \"$(sha256sum < {f.path} | cut -d' ' -f1)\" = {_sha256(f.content)} ] "
                     f"&& echo \"copied {f.path}\"")
    return "out=$(" + "; ".join(lines) + "); echo \"$out\"; [ -z \"$out\" ]"


def parse_lab_remove_probe(text: str) -> list[str]:
    return [ln.split(" ", 1)[1] for ln in text.splitlines() if ln.startswith("copied ")]


def lab_remove_step(params: Params, host: Host, facts: dict | None = None, dest: str = BIN_DIR) -> HostStep:
    """Remove what :func:`lab_install_step` put on the host, and only that: binaries still
    identical to the lab's, unit files still as phase 30 wrote them (a file changed since is kept)."""
    src = shlex.quote(lab_binaries(params) or "/nonexistent")
    d = shlex.quote(dest)
    cmds = [(f"for b in {' '.join(LAB_BINARIES)}; do if [ -e {d}/$b ] && cmp -s {src}/$b {d}/$b; then rm -f {d}/$b; "
             f"elif [ -e {d}/$b ]; then echo \"kept {dest}/$b: it differs from {lab_binaries(params)}/$b\"; fi; done")]
    for f in lab_unit_files(params, facts):
        same = f"[ \"$(sha256sum < {f.path} | cut -d' ' -f1)\" = {_sha256(f.content)} ]"
        cmds.append(f"if [ -e {f.path} ]; then if {same}; then rm -f {f.path}; "
                    f"else echo \"kept {f.path}: changed since phase 30 wrote it\"; fi; fi")
    cmds.append(f"rmdir {UNIT_DIR}/kubelet.service.d 2>/dev/null; "
                "if command -v systemctl >/dev/null 2>&1; then systemctl daemon-reload >/dev/null 2>&1; fi; true")
    return HostStep(host=host.name, step="packages | remove",
                    why="lab: remove the binaries and kubelet units phase 30 copied (no package manager involved)",
                    probe=lab_remove_probe(params, facts, dest),
                    probe_means="none of the binaries or unit files phase 30 copied is on the host", commands=cmds)
