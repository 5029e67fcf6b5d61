"""Params checks for the unattended install files of phase 05 (Kickstart, Ubuntu autoinstall).

A params mistake that would produce an invalid or dangerous install file is reported here, before
any file is written, with its key path and a fix. `validate_data` calls :func:`params_problems`;
the checks run only when the params file has an `os_install:` section (a site whose hosts are
already installed does not need one), or when asked with ``force=True`` (phase 05 itself).

Also here, because both the params layer and phase 05 need them: which install file a distro and
version get (:func:`resolve_target`), and the volume-label escaping of the boot line
(:func:`escape_label`).
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

# ISO 9660 volume identifiers hold at most 32 characters; a longer label cannot be the ISO's own.
ISO_LABEL_MAX = 32
# Characters udev keeps as they are in /dev/disk/by-label names; everything else is written \xNN
# (udev's encoding, which dracut's hd:LABEL= lookup reproduces). Spaces are the usual casualty.
_LABEL_SAFE = re.compile(r"[0-9A-Za-z#+\-.:=@_]")
URL_SCHEMES = ("http://", "https://", "ftp://", "nfs:")
INSTALL_SOURCE_MEDIA = "media"


@dataclass(frozen=True)
class Target:
    """What one OS install target gets: Kickstart (with its pykickstart version) or autoinstall."""

    distro: str
    version: str
    kind: str | None  # "kickstart", "autoinstall" or None (no template)
    ks_version: str | None = None  # pykickstart / ksvalidator -v flag
    why_not: str = ""

    @property
    def id(self) -> str:
        return f"{self.distro}-{self.version}"

    @property
    def legacy(self) -> bool:
        return self.ks_version == "RHEL7"


def resolve_target(distro: str, version: str) -> Target:
    """The install file kind for an OS: Rocky/Alma/RHEL 8-9 and CentOS 7 get Kickstart, Ubuntu
    22.04/24.04 autoinstall; anything else no template (the reason in `why_not`)."""
    distro, version = str(distro).lower(), str(version)
    major = version.split(".")[0]
    if distro in ("rocky", "almalinux", "rhel") and major in ("8", "9"):
        return Target(distro, major, "kickstart", f"RHEL{major}")
    if distro == "centos" and major == "7":
        return Target(distro, "7", "kickstart", "RHEL7")
    if distro == "ubuntu" and version in ("22.04", "24.04"):
        return Target(distro, version, "autoinstall")
    return Target(distro, version, None, why_not=(
        f"no unattended-install template for {distro} {version} (phase 05 writes Kickstart for "
        "Rocky/Alma/RHEL 8-9 and CentOS 7, autoinstall for Ubuntu 22.04/24.04)"))


def parse_targets(text: str) -> list[tuple[str, str]]:
    """`"rocky-9, centos-7, ubuntu-24.04"` -> [("rocky", "9"), ...]; raises ValueError on a bad item."""
    out = []
    for item in (text or "").replace(";", ",").split(","):
        item = item.strip()
        if not item:
            continue
        m = re.fullmatch(r"([a-z]+)[-: ]?([0-9][0-9.]*)", item.lower())
        if not m:
            raise ValueError(f"target {item!r}: write DISTRO-VERSION, e.g. rocky-9, centos-7, ubuntu-24.04")
        out.append((m.group(1), m.group(2)))
    return out


def escape_label(label: str) -> str:
    """A volume label as `hd:LABEL=` needs it on the kernel command line: spaces (and every other
    character udev escapes in /dev/disk/by-label) as \\xNN, e.g. 'CentOS 7 x86_64' ->
    'CentOS\\x207\\x20x86_64'."""
    return "".join(c if _LABEL_SAFE.fullmatch(c) else "".join(f"\\x{b:02x}" for b in c.encode()) for c in label)


def unescape_label(text: str) -> str:
    """The inverse of :func:`escape_label` (also decodes labels seen in logs and /dev/disk/by-label)."""
    def dec(m: re.Match) -> str:
        return bytes.fromhex(m.group(0)[2:].replace("\\x", "")).decode("utf-8", "replace")

    return re.sub(r"(?:\\x[0-9a-fA-F]{2})+", dec, text)


def is_url(v: str | None) -> bool:
    return bool(v) and str(v).startswith(URL_SCHEMES)


def key_path(path: str, base_dir: str | Path | None = None) -> Path:
    """A key file's path: `~` expanded; a relative path is taken from `base_dir` (the params file's
    folder) when given, else from the current directory."""
    p = Path(os.path.expanduser(path))
    if not p.is_absolute() and base_dir is not None:
        p = Path(base_dir) / p
    return p


def read_public_key(path: str, base_dir: str | Path | None = None) -> str:
    """The key line(s) of a public key file; raises ValueError with the reason when it is not one
    (OSError when it cannot be read)."""
    p = key_path(path, base_dir)
    text = p.read_text()  # OSError propagates: unreadable
    if "PRIVATE KEY" in text:
        raise ValueError("this is a PRIVATE key; name the .pub file (the private key must never leave your machine)")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise ValueError("the file is empty")
    for ln in lines:
        if not re.match(r"^(ssh-(rsa|ed25519|dss)|ecdsa-sha2-nistp\d+|sk-(ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com)\s+[A-Za-z0-9+/=]+", ln):
            raise ValueError(f"not an OpenSSH public key line: {ln[:40]!r}...")
    return "\n".join(lines)


def _label(i: int, h: Any) -> str:
    name = h.get("name") if isinstance(h, dict) else None
    return f"hosts[{i}]" + (f"({name})" if name else "")


def params_problems(data: dict, force: bool = False, targets: Iterable[tuple[str, str]] | None = None,
                    base_dir: str | Path | None = None, check_files: bool = True) -> list:
    """Problems in a parsed params mapping that would make phase 05 write an invalid or dangerous
    install file. Tolerant of malformed input (the schema reports shapes). Runs only when `data` has
    an `os_install` section, or with `force=True`. `targets` overrides the OS from `data["os"]`;
    `base_dir` (the params file's folder) anchors relative public-key paths; `check_files=False`
    skips reading the key files (for checking a params file away from the machine that runs phase 05,
    e.g. the committed example).

    Returns a list of :class:`mlplat.params.load.Problem`, each with key path and fix.
    """
    from .load import Problem  # here, not at the top: load.py imports this module

    if not isinstance(data, dict):
        return []
    if "os_install" not in data and not force:
        return []
    oi = data.get("os_install") if isinstance(data.get("os_install"), dict) else {}
    osd = data.get("os") if isinstance(data.get("os"), dict) else {}
    net = data.get("network") if isinstance(data.get("network"), dict) else {}
    mirrors = data.get("mirrors") if isinstance(data.get("mirrors"), dict) else {}
    hosts = data.get("hosts") if isinstance(data.get("hosts"), list) else []
    out: list = []

    pairs = list(targets) if targets else [(osd.get("distro", "rocky"), str(osd.get("version", "9")))]
    tgts = [resolve_target(d, v) for d, v in pairs]
    if not targets and not force and all(t.kind is None for t in tgts):
        # No install file for this OS (e.g. the lab's Debian hosts): phase 05 says so when it runs;
        # the section's other keys do not matter to anything else.
        return []
    kinds = {t.kind for t in tgts}
    for t in tgts:
        if t.kind is None:
            out.append(Problem("os.distro" if not targets else "targets", t.why_not,
                               "set os.distro/os.version to one of those, or remove the os_install section"))
    anaconda = "kickstart" in kinds
    ubuntu = "autoinstall" in kinds
    rhel_modern = any(t.kind == "kickstart" and not t.legacy for t in tgts)

    # The volume label of the install ISO: hd:LABEL= must equal it exactly.
    label = oi.get("iso_volume_label")
    if anaconda:
        if not label:
            out.append(Problem("os_install.iso_volume_label", "not set: the boot line needs inst.stage2=hd:LABEL=<label>",
                               "set it to the ISO's volume label exactly (e.g. 'Rocky-9-5-x86_64-dvd'; "
                               "`blkid -o value -s LABEL file.iso` or `isoinfo -d -i file.iso` shows it)"))
    if isinstance(label, str) and label:
        if "\\x" in label:
            out.append(Problem("os_install.iso_volume_label", f"{label!r} is already escaped",
                               f"write the label as the ISO shows it, with plain spaces ({unescape_label(label)!r}); "
                               "mlplat escapes it for the boot line"))
        elif len(label) > ISO_LABEL_MAX:
            out.append(Problem("os_install.iso_volume_label", f"{len(label)} characters: an ISO 9660 volume label has at most {ISO_LABEL_MAX}",
                               "copy the label from the ISO itself (blkid -o value -s LABEL file.iso)"))
        if any(c in label for c in "'\"`$\\\n\t"):
            if "\\x" not in label:
                out.append(Problem("os_install.iso_volume_label", "contains quotes, '$' or a backslash",
                                   "use the ISO's own label; relabel the medium without such characters"))

    # Install source (Anaconda paths).
    src = oi.get("install_source")
    if src and not (is_url(src) or src == INSTALL_SOURCE_MEDIA):
        out.append(Problem("os_install.install_source", f"{src!r} is neither a URL nor '{INSTALL_SOURCE_MEDIA}'",
                           "write http(s)://mirror/.../BaseOS/x86_64/os/, nfs:server:/path, or 'media' to install "
                           "from the full DVD image on the boot medium"))
    if rhel_modern and not src and not mirrors.get("rhel_baseos"):
        out.append(Problem("os_install.install_source", "no install source: neither os_install.install_source nor "
                           "mirrors.rhel_baseos is set",
                           "set mirrors.rhel_baseos to your mirror's BaseOS URL (e.g. https://mirror/rocky/9/BaseOS/x86_64/os/), "
                           "or os_install.install_source: media when the DVD image is on the boot medium"))
    base_url = src if is_url(src) else mirrors.get("rhel_baseos")
    if rhel_modern and is_url(base_url) and not mirrors.get("rhel_appstream") and "BaseOS" not in str(base_url):
        out.append(Problem("mirrors.rhel_appstream", "not set, and the install source is not a .../BaseOS/... URL "
                           "it could be derived from; packages host prep needs come from AppStream",
                           "set mirrors.rhel_appstream to the mirror's AppStream URL (.../AppStream/x86_64/os/)"))
    for key in ("rhel_baseos", "rhel_appstream", "apt"):
        v = mirrors.get(key)
        if v and not is_url(v):
            out.append(Problem(f"mirrors.{key}", f"{v!r} is not a URL", "write the mirror's http(s):// URL"))
    if any(t.legacy for t in tgts) and not is_url(mirrors.get("centos7_vault", "https://vault.centos.org/7.9.2009")):
        out.append(Problem("mirrors.centos7_vault", "not a URL", "write e.g. https://vault.centos.org/7.9.2009"))

    ks_url = oi.get("kickstart_url")
    if ks_url and not str(ks_url).startswith(("http://", "https://", "ftp://", "nfs:")):
        out.append(Problem("os_install.kickstart_url", f"{ks_url!r} is not an http(s)/ftp/nfs URL",
                           "write the URL where the run's os-install/ folder is served (http://10.0.0.5/os-install/), "
                           "or leave it empty to use an OEMDRV (Kickstart) / CIDATA (Ubuntu) USB stick"))

    # Root login is by SSH key only: without a readable public key nobody could log in.
    keys = oi.get("authorized_keys")
    if not keys:
        out.append(Problem("os_install.authorized_keys", "no SSH public key: root login is by key only, so nobody could log in",
                           "list the path of at least one public key file (e.g. ~/.ssh/id_ed25519.pub)"))
    elif isinstance(keys, list) and check_files:
        for i, k in enumerate(keys):
            if not isinstance(k, str):
                continue
            try:
                read_public_key(k, base_dir)
            except OSError as e:
                out.append(Problem(f"os_install.authorized_keys[{i}]", f"cannot read {k}: {e.strerror or e}",
                                   "check the path (a relative path is taken from the params file's folder); "
                                   "the file must be readable by you"))
            except ValueError as e:
                out.append(Problem(f"os_install.authorized_keys[{i}]", f"{k}: {e}", "name an OpenSSH public key file (.pub)"))

    tz = oi.get("timezone", "UTC")
    if isinstance(tz, str) and tz not in ("UTC",):
        try:
            import zoneinfo

            known = zoneinfo.available_timezones()
        except Exception:  # no tz database on this machine: nothing to check against
            known = set()
        if known and tz not in known:
            out.append(Problem("os_install.timezone", f"unknown time zone {tz!r}", "use an IANA name such as Europe/Berlin or UTC"))
    lang = oi.get("language", "en_US.UTF-8")
    if isinstance(lang, str) and not re.fullmatch(r"[a-z]{2,3}_[A-Z]{2}(\.[A-Za-z0-9-]+)?", lang):
        out.append(Problem("os_install.language", f"{lang!r} is not a locale name", "write e.g. en_US.UTF-8"))
    for i, pkg in enumerate(oi.get("extra_packages") or []):
        if not isinstance(pkg, str) or not re.fullmatch(r"@?\^?[A-Za-z0-9][A-Za-z0-9+._:\-]*", pkg):
            out.append(Problem(f"os_install.extra_packages[{i}]", f"{pkg!r} is not a package name",
                               "one package (or @group) per list item, no spaces"))

    # Per host: network and disk.
    gw = net.get("gateway")
    static_hosts = []
    for i, h in enumerate(hosts):
        if not isinstance(h, dict):
            continue
        where = _label(i, h)
        static = h.get("static_address")
        if not static and net.get("manage_static_ip"):
            try:
                ipaddress.ip_address(h.get("address"))
                static = f"{h.get('address')}/{net.get('prefix_length', 24)}"
            except (ValueError, TypeError):
                pass
        if static:
            static_hosts.append(where)
            if not h.get("interface"):
                out.append(Problem(f"{where}.interface", "a static address needs the NIC it goes on",
                                   "name the interface as the installer sees it (e.g. ens1f0, eno1; `ip link` on the "
                                   "booted installer or the NIC's MAC-based name)"))
            if gw:
                try:
                    iface = ipaddress.ip_interface(static)
                    if ipaddress.ip_address(gw) not in iface.network:
                        out.append(Problem("network.gateway", f"gateway {gw} is outside {where}'s network {iface.network}",
                                           "fix network.gateway or the host's static_address prefix"))
                except ValueError:
                    pass
        disk = h.get("install_disk")
        if not disk:
            out.append(Problem(f"{where}.install_disk", "not set: the install erases the disk it installs to, and must not guess",
                               "name the disk, e.g. sda, nvme0n1 or /dev/disk/by-id/nvme-... (see the facts table of 00_preflight)"))
        elif isinstance(disk, str):
            d = disk[5:] if disk.startswith("/dev/") else disk
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:+\-]*(/[A-Za-z0-9_.:+\-]+)*", d) or ".." in d:
                out.append(Problem(f"{where}.install_disk", f"{disk!r} is not a disk name", "write e.g. sda, nvme0n1 or /dev/disk/by-id/..."))
            elif ubuntu and d.startswith("disk/"):
                out.append(Problem(f"{where}.install_disk", f"{disk!r}: Ubuntu's autoinstall matches disks by kernel name",
                                   "write the kernel name (sda, nvme0n1) for Ubuntu targets"))
            elif re.fullmatch(r"(sd[a-z]+|nvme\d+n\d+|vd[a-z]+|xvd[a-z]+|hd[a-z]+)(p?\d+)", d):
                out.append(Problem(f"{where}.install_disk", f"{disk!r} looks like a partition", "name the whole disk (e.g. sda, nvme0n1)"))
    if static_hosts and not gw:
        out.append(Problem("network.gateway", f"not set, but {', '.join(static_hosts)} get a static address",
                           "set network.gateway to the router of the hosts' network"))
    return out
