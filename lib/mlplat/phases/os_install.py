"""Phase 05, OS install: unattended install files per host, validated, with the boot arguments
that start them and the install-media pitfalls as hints. Touches no host.

Per host, from the params (hosts, static network, install disk, mirrors, SSH public keys, OS):

- a Kickstart (`ks.cfg`) for Rocky/Alma/RHEL 8-9 and the CentOS 7 legacy path (vault mirror),
  checked with pykickstart the way `ksvalidator -v RHEL9|RHEL8|RHEL7` checks it;
- an Ubuntu 22.04/24.04 autoinstall (`user-data`, `meta-data`), checked against the installer's
  JSON schema (subiquity's `autoinstall-schema.json`, found under the shared fixtures);
- `boot-args.txt`: the kernel arguments (`inst.stage2=hd:LABEL=<escaped label> inst.ks=...`, or
  `autoinstall ds=nocloud;s=...`) as typed in GRUB and isolinux.

Files go to `<run_dir>/os-install/<host>/` (one target) or `<run_dir>/os-install/<host>/<target>/`
(several). Root logs in by SSH key only. A root password hash, when the params reference one, is
resolved here and written into the files (where the installer needs it; they are made 0600), and is
masked wherever this module shows a file or a message.

The step functions take the phase context from :mod:`.common`; the render and validate functions
are plain and usable on their own (tests, 90_troubleshoot).
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import json
import os
import re
import shlex
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from ..params import Host, Params, resolve_secret
from ..params.os_install_checks import (INSTALL_SOURCE_MEDIA, Target, escape_label, is_url, params_problems,
                                        parse_targets, read_public_key, resolve_target)
from ..report import StepResult, Table, failed, scrub, skipped
from ..report.install_media import diagnose_install_log, known_pitfalls
from . import common

NUMBER, NAME = "05", "os_install"
STEP_PARAMS = "os-install | params"
STEP_KS = "os-install | kickstart"
STEP_AI = "os-install | autoinstall"
STEP_BOOT = "os-install | boot arguments"
STEP_LOG = "os-install | install log"

SCHEMA_NAME = "subiquity-autoinstall-schema.json"
SHARED_ENV = "MLPLAT_SHARED"
CENTOS7_EOL = ("CentOS 7 is end of life (2024-06-30): it installs from the vault mirror and gets no security "
               "updates; prefer Rocky/Alma 9")

# What phase 00 and host prep need on a fresh host: sshd, python3 and sudo for the SSH steps,
# chrony for time, lvm2 and growpart for the disk step, pciutils for the GPU facts (lspci),
# curl/tar/rsync for downloads. Kernel headers are phase 10's (they must match the running kernel).
BASE_PACKAGES = {
    "rhel": ["@^minimal-environment", "openssh-server", "sudo", "python3", "chrony", "curl", "tar", "rsync",
             "lvm2", "cloud-utils-growpart", "pciutils", "NetworkManager"],
    "rhel7": ["@core", "openssh-server", "sudo", "python3", "chrony", "curl", "tar", "rsync", "lvm2",
              "cloud-utils-growpart", "pciutils", "NetworkManager"],
    "ubuntu": ["openssh-server", "sudo", "python3", "chrony", "curl", "rsync", "lvm2", "cloud-guest-utils",
               "pciutils"],
}
# Options every sshd from CentOS 7's 7.4 on knows: an unknown keyword would stop sshd from starting.
SSHD_KEY_ONLY = ["PermitRootLogin prohibit-password", "PasswordAuthentication no"]
_HASH_RX = re.compile(r"^\$(1|5|6|y|2[aby]|gy|7)\$[./A-Za-z0-9$=,-]+$")
MASK = "***"


# ---------------------------------------------------------------------------------------------
# Inputs: network per host, keys and the password hash
# ---------------------------------------------------------------------------------------------

@dataclass
class HostNet:
    """The network a host's installer and installed system get."""

    mode: str  # "static" or "dhcp"
    iface: str | None
    address: str | None = None  # with prefix, e.g. 10.0.0.11/24
    gateway: str | None = None
    dns: list[str] = field(default_factory=list)
    search: list[str] = field(default_factory=list)

    @property
    def ip(self) -> str | None:
        return self.address.split("/")[0] if self.address else None

    @property
    def netmask(self) -> str | None:
        return str(ipaddress.ip_interface(self.address).netmask) if self.address else None

    @property
    def prefix(self) -> int | None:
        return ipaddress.ip_interface(self.address).network.prefixlen if self.address else None


def host_network(params: Params, host: Host) -> HostNet:
    """Static when the host has `static_address` (or `network.manage_static_ip` and an IP address),
    else DHCP on the named interface (or the first with a link)."""
    net = params.network
    addr = host.static_address
    if not addr and net.manage_static_ip:
        try:
            ipaddress.ip_address(host.address)
            addr = f"{host.address}/{net.prefix_length}"
        except ValueError:
            addr = None
    if addr:
        return HostNet("static", host.interface, addr, net.gateway, list(net.dns), list(net.search_domains))
    return HostNet("dhcp", host.interface, None, None, list(net.dns), list(net.search_domains))


def disk_name(disk: str) -> str:
    """`/dev/nvme0n1` -> `nvme0n1`; `/dev/disk/by-id/X` -> `disk/by-id/X` (Kickstart's form)."""
    return disk[5:] if disk.startswith("/dev/") else disk


@dataclass
class Inputs:
    """What the renderers need beyond the params: public key lines and the resolved hash."""

    keys: list[str]
    root_hash: str | None = None


def resolve_inputs(params: Params, base_dir: str | Path | None = None) -> Inputs:
    """Read the public keys (relative paths from `base_dir`, the params file's folder) and resolve
    the root password hash (registering it for masking). Raises ValueError with a message that
    never contains the hash."""
    oi = params.os_install
    keys: list[str] = []
    for i, path in enumerate(oi.authorized_keys):
        try:
            keys.extend(read_public_key(path, base_dir).splitlines())
        except OSError as e:
            raise ValueError(f"os_install.authorized_keys[{i}]: cannot read {path}: {e.strerror or e}") from None
        except ValueError as e:
            raise ValueError(f"os_install.authorized_keys[{i}]: {path}: {e}") from None
    if not keys:
        raise ValueError("os_install.authorized_keys: no SSH public key; root logs in by key only")
    root_hash = None
    if oi.root_password_hash is not None:
        try:
            root_hash = resolve_secret(oi.root_password_hash)
        except KeyError as e:
            raise ValueError(f"os_install.root_password_hash: {e.args[0]}") from None
        except OSError as e:
            raise ValueError(f"os_install.root_password_hash: cannot read the file: {e.strerror}") from None
        if not _HASH_RX.match(root_hash.strip()):
            raise ValueError("os_install.root_password_hash: the referenced value is not a crypt(3) hash; store a hash "
                             "made with `openssl passwd -6` or `mkpasswd -m sha-512`, never the password itself")
        root_hash = root_hash.strip()
    return Inputs(keys, root_hash)


def mask(text: str) -> str:
    """Text safe to show: registered secrets masked, and any password hash in an install file too."""
    text = scrub(text)
    text = re.sub(r"(rootpw\s+--iscrypted\s+)(\"[^\"]*\"|'[^']*'|\S+)", rf"\g<1>{MASK}", text)
    text = re.sub(r"(usermod\s+-p\s+)('[^']*'|\S+)", rf"\g<1>{MASK}", text)
    text = re.sub(r"\$(1|5|6|y|2[aby]|gy|7)\$[./A-Za-z0-9$=,-]{8,}", MASK, text)
    return text


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------

def marker(params: Params, host: Host, target: Target, net: HostNet) -> dict:
    """What phase 05 asked for, written to /etc/mlplat/os-install.json on the installed host so that
    00_preflight can report drift. No secrets, no dates (the files are reproducible)."""
    return {"written_by": "mlplat 05_os_install", "site": params.site, "host": host.name, "hostname": host.name,
            "os": {"distro": target.distro, "version": target.version}, "interface": net.iface,
            "address": net.address, "network": net.mode, "install_disk": host.install_disk,
            "lvm": params.os_install.lvm}


def install_urls(params: Params, target: Target) -> tuple[str | None, list[tuple[str, str]]]:
    """The Kickstart install source (None: the boot media) and the extra repos, as (name, url)."""
    oi, m = params.os_install, params.mirrors
    if oi.install_source == INSTALL_SOURCE_MEDIA:
        return None, []
    if target.legacy:
        vault = m.centos7_vault.rstrip("/")
        base = oi.install_source if is_url(oi.install_source) else f"{vault}/os/x86_64/"
        return base, [("updates", f"{vault}/updates/x86_64/"), ("extras", f"{vault}/extras/x86_64/")]
    base = oi.install_source if is_url(oi.install_source) else m.rhel_baseos
    app = m.rhel_appstream or (base.replace("BaseOS", "AppStream") if base and "BaseOS" in base else None)
    return base, ([("AppStream", app)] if app else [])


def _q(v: str) -> str:
    """Quote a Kickstart argument when it needs it (pykickstart splits lines like a shell)."""
    return shlex.quote(v) if re.search(r"[\s\"'$\\;#]", v) else v


def _heredoc(path: str, lines: list[str], mode: str = "0644", dir_mode: str = "0755") -> list[str]:
    return [f"install -d -m {dir_mode} {shlex.quote(os.path.dirname(path))}",
            f"cat > {shlex.quote(path)} <<'MLPLAT_EOF'", *lines, "MLPLAT_EOF", f"chmod {mode} {shlex.quote(path)}"]


def render_kickstart(params: Params, host: Host, target: Target, inputs: Inputs) -> str:
    """The Kickstart text for one host. Deterministic (no dates) so that it can be compared."""
    oi = params.os_install
    net = host_network(params, host)
    disk = disk_name(host.install_disk or "")
    rhel7, v = target.legacy, target.ks_version
    base, repos = install_urls(params, target)
    L: list[str] = [
        f"# Kickstart for {host.name}: {target.distro} {target.version}, written by mlplat phase 05 (05_os_install)",
        f"# from the params of site {params.site!r}. Regenerate instead of editing; checked with ksvalidator -v {v}.",
        "# Boot arguments: boot-args.txt next to this file.",
    ]
    if rhel7:
        L.append(f"# WARNING: {CENTOS7_EOL}.")
    L += ["", "text", "skipx", "firstboot --disable", "reboot", ""]
    L.append("# Install source")
    if base is None:
        L.append("# the full DVD image on the boot medium (inst.repo=hd:LABEL=... on the boot line)")
    else:
        L.append(f"url --url={_q(base)}")
    for name, url in repos:
        L.append(f"repo --name={name} --baseurl={_q(url)}")
    L += ["", f"lang {oi.language}", f"keyboard --vckeymap={_q(oi.keyboard)} --xlayouts={_q(oi.keyboard)}"]
    ntp = params.network.ntp_servers
    if rhel7 or v == "RHEL8":
        L.append(f"timezone {oi.timezone} --utc" + (f" --ntpservers={','.join(ntp)}" if ntp else ""))
    else:
        L.append(f"timezone {oi.timezone} --utc")
        L += [f"timesource --ntp-server={s}" for s in ntp]
    L += ["", f"# Network: {net.mode} on {net.iface or 'the first NIC with a link'}"]
    nw = [f"network --device={net.iface or 'link'}", f"--bootproto={net.mode}"]
    if net.mode == "static":
        nw += [f"--ip={net.ip}", f"--netmask={net.netmask}"]
        if net.gateway:
            nw.append(f"--gateway={net.gateway}")
    if net.dns and net.mode == "static":  # with DHCP the DNS servers come from DHCP too
        nw.append(f"--nameserver={','.join(net.dns)}")
    if net.search and v == "RHEL9":
        nw.append(f"--ipv4-dns-search={','.join(net.search)}")
    nw += [f"--hostname={host.name}", "--onboot=yes", "--activate"]
    L.append(" ".join(nw))
    L += ["", "# Root: SSH key only (password login over SSH is off; a console password only if params give a hash)"]
    L.append(f"rootpw --iscrypted {inputs.root_hash}" if inputs.root_hash else "rootpw --lock")
    if not rhel7:  # RHEL 7's Kickstart has no sshkey command: %post writes the key there
        L += [f'sshkey --username=root "{k}"' for k in inputs.keys]
    L += ["firewall --enabled --ssh", "services --enabled=sshd,chronyd", ""]
    L += [f"# Disk: only {disk} is used, and everything on it is erased. No swap (Kubernetes wants it off).",
          f"ignoredisk --only-use={disk}", "zerombr", f"clearpart --all --initlabel --drives={disk}",
          f"bootloader --location=mbr --boot-drive={disk}", "reqpart --add-boot"]
    if oi.lvm:
        L += [f"part pv.01 --size=1 --grow --ondisk={disk}", "volgroup vg_root pv.01",
              "logvol / --vgname=vg_root --name=root --fstype=xfs --size=1 --grow"]
    else:
        L.append(f"part / --fstype=xfs --size=1 --grow --ondisk={disk}")
    pkgs = BASE_PACKAGES["rhel7" if rhel7 else "rhel"] + [p for p in oi.extra_packages]
    L += ["", "%packages"] + list(dict.fromkeys(pkgs)) + ["%end", ""]
    L += ["%post --log=/root/mlplat-ks-post.log", "set -eu"]
    if rhel7:
        L += ["# root's SSH keys (RHEL 7 Kickstart has no sshkey command)"]
        L += _heredoc("/root/.ssh/authorized_keys", inputs.keys, "0600", "0700")
        L += ["restorecon -R /root/.ssh || true"]
        L += ["# CentOS 7 is EOL: mirrorlist.centos.org is gone, point yum at the vault (phase 10 keeps it so)"]
        vault = params.mirrors.centos7_vault.rstrip("/")
        repo_lines = []
        for name in ("base", "updates", "extras"):
            sub = "os" if name == "base" else name
            repo_lines += [f"[{name}]", f"name=CentOS-7 - {name} (vault)", f"baseurl={vault}/{sub}/$basearch/",
                           "gpgcheck=1", "gpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-CentOS-7", "enabled=1", ""]
        L += _heredoc("/etc/yum.repos.d/CentOS-Base.repo", repo_lines[:-1])
    if v == "RHEL9":
        L += ["# sshd: keys only (a drop-in, read before the distribution's defaults)"]
        L += _heredoc("/etc/ssh/sshd_config.d/01-mlplat.conf", SSHD_KEY_ONLY, "0600")
    else:
        L += ["# sshd: keys only (this release's sshd_config reads no drop-in directory)"]
        for o in SSHD_KEY_ONLY:
            k = o.split()[0]
            L += [f"sed -i -e 's/^#\\?{k} .*/{o}/' /etc/ssh/sshd_config",
                  f"grep -q '^{k} ' /etc/ssh/sshd_config || echo '{o}' >> /etc/ssh/sshd_config"]
    if net.search and net.iface and v != "RHEL9":  # RHEL 9 takes --ipv4-dns-search above
        f = f"/etc/sysconfig/network-scripts/ifcfg-{net.iface}"
        L.append(f"if [ -f {f} ]; then echo 'DOMAIN=\"{' '.join(net.search)}\"' >> {f}; fi")
    L += ["# what phase 05 asked for: 00_preflight compares the host with it"]
    L += _heredoc("/etc/mlplat/os-install.json", [json.dumps(marker(params, host, target, net), sort_keys=True)])
    L += ["%end", ""]
    return "\n".join(L)


def render_user_data(params: Params, host: Host, target: Target, inputs: Inputs) -> str:
    """The Ubuntu autoinstall `user-data` (NoCloud) for one host; same content as the Kickstart."""
    oi = params.os_install
    net = host_network(params, host)
    disk = disk_name(host.install_disk or "")
    ai: dict[str, Any] = {"version": 1, "locale": oi.language, "keyboard": {"layout": oi.keyboard},
                          "timezone": oi.timezone}
    if net.mode == "static":
        eth: dict[str, Any] = {"dhcp4": False, "addresses": [net.address]}
        if net.gateway:
            eth["routes"] = [{"to": "default", "via": net.gateway}]
        ns: dict[str, Any] = {}
        if net.dns:
            ns["addresses"] = list(net.dns)
        if net.search:
            ns["search"] = list(net.search)
        if ns:
            eth["nameservers"] = ns
        ai["network"] = {"version": 2, "ethernets": {net.iface: eth}}
    else:
        key = net.iface or "mlplat-any"
        eth = {"dhcp4": True}
        if not net.iface:
            eth = {"match": {"name": "en*"}, "dhcp4": True}
        ai["network"] = {"version": 2, "ethernets": {key: eth}}
    if params.mirrors.apt:
        ai["apt"] = {"primary": [{"arches": ["default"], "uri": params.mirrors.apt}]}
    layout: dict[str, Any] = {"name": "lvm" if oi.lvm else "direct", "match": {"path": f"/dev/{disk}"}}
    if oi.lvm and target.version != "22.04":
        layout["sizing-policy"] = "all"  # 24.04: give the root LV the whole disk (22.04: phase 10 grows it)
    ai["storage"] = {"layout": layout}
    ai["ssh"] = {"install-server": True, "allow-pw": False}
    ai["packages"] = list(dict.fromkeys(BASE_PACKAGES["ubuntu"] + list(oi.extra_packages)))
    late = ["mkdir -p -m 0700 /target/root/.ssh",
            "printf '%s\\n' " + " ".join(shlex.quote(k) for k in inputs.keys) + " > /target/root/.ssh/authorized_keys",
            "chmod 0600 /target/root/.ssh/authorized_keys",
            "mkdir -p /target/etc/ssh/sshd_config.d",
            "printf '%s\\n' " + " ".join(shlex.quote(o) for o in SSHD_KEY_ONLY)
            + " > /target/etc/ssh/sshd_config.d/01-mlplat.conf",
            "mkdir -p /target/etc/mlplat",
            "printf '%s\\n' " + shlex.quote(json.dumps(marker(params, host, target, net), sort_keys=True))
            + " > /target/etc/mlplat/os-install.json"]
    if inputs.root_hash:
        late.append(f"curtin in-target --target=/target -- usermod -p {shlex.quote(inputs.root_hash)} root")
    else:
        late.append("curtin in-target --target=/target -- passwd -l root")
    ai["late-commands"] = late
    # Cloud-init on the installed system (no `identity`: there is no first user, root logs in by key).
    ud: dict[str, Any] = {"hostname": host.name, "preserve_hostname": False, "disable_root": False,
                          "ssh_pwauth": False, "users": []}
    if params.network.ntp_servers:
        ud["ntp"] = {"enabled": True, "servers": list(params.network.ntp_servers)}
    ai["user-data"] = ud
    ai["shutdown"] = "reboot"
    head = ["#cloud-config",
            f"# Ubuntu {target.version} autoinstall for {host.name}, written by mlplat phase 05 (05_os_install)",
            f"# from the params of site {params.site!r}. Regenerate instead of editing; checked against subiquity's",
            "# autoinstall schema. Boot arguments: boot-args.txt next to this file.",
            f"# Disk: only /dev/{disk} is used, and everything on it is erased."]
    body = yaml.safe_dump({"autoinstall": ai}, sort_keys=False, default_flow_style=False, width=1000)
    return "\n".join(head) + "\n" + body


def render_meta_data(host: Host) -> str:
    """NoCloud `meta-data`: a stable instance id (cloud-init reruns first-boot modules when it changes)."""
    return f"instance-id: mlplat-{host.name}\nlocal-hostname: {host.name}\n"


def host_url(params: Params, rel: str) -> str | None:
    """The URL of a host's folder when `os_install.kickstart_url` says where os-install/ is served."""
    base = params.os_install.kickstart_url
    if not base:
        return None
    host = rel.split("/")[0]
    if "{host}" in base:
        url = base.replace("{host}", host)
        sub = rel.split("/", 1)[1] if "/" in rel else ""
        return url.rstrip("/") + "/" + (sub + "/" if sub else "")
    return base.rstrip("/") + "/" + rel + "/"


def boot_arguments(params: Params, host: Host, target: Target, rel: str | None = None) -> dict:
    """The kernel arguments that start the unattended install, as a dict: `cmdline` (what
    /proc/cmdline shows), `grub` (the linux line to type after pressing e in GRUB, ';' quoted),
    `isolinux` (BIOS append line, Anaconda only) and `notes`."""
    rel = rel or host.name
    url = host_url(params, rel)
    net = host_network(params, host)
    notes: list[str] = []
    if target.kind == "kickstart":
        label = params.os_install.iso_volume_label or "<iso_volume_label>"
        args = [f"inst.stage2=hd:LABEL={escape_label(label)}"]
        if params.os_install.install_source == INSTALL_SOURCE_MEDIA:
            args.append(f"inst.repo=hd:LABEL={escape_label(label)}")
        if url:
            args.append(f"inst.ks={url}ks.cfg")
            if net.mode == "static":
                args.append(f"ip={net.ip}::{net.gateway or ''}:{net.netmask}:{host.name}:{net.iface}:none")
                args += [f"nameserver={d}" for d in net.dns[:3]]
            elif net.iface:
                args.append(f"ip={net.iface}:dhcp")
            notes.append(f"serve the run's os-install/ folder so that {url}ks.cfg answers (e.g. "
                         "`python3 -m http.server` in it on the install network)")
        else:
            notes.append("no os_install.kickstart_url: copy ks.cfg to the root of a second USB stick labelled OEMDRV; "
                         "Anaconda reads /ks.cfg from it without an inst.ks argument")
        notes.append(f"the USB stick must carry the ISO's volume label {label!r} exactly: write it with dd or "
                     "Fedora Media Writer (ISO-mode tools relabel it)")
        cmdline = " ".join(args)
        kernel = "linuxefi" if target.legacy else "linux"
        return {"kind": "anaconda", "cmdline": cmdline, "grub": f"{kernel} /images/pxeboot/vmlinuz {cmdline} quiet",
                "isolinux": f"append initrd=initrd.img {cmdline} quiet", "notes": notes}
    ds_kind = "nocloud-net" if target.version == "22.04" else "nocloud"
    if url:
        ds = f"ds={ds_kind};s={url}"
        cmdline = f"autoinstall {ds}"
        grub = f"linux /casper/vmlinuz autoinstall '{ds}' ---"
        notes.append(f"serve the run's os-install/ folder so that {url}user-data and {url}meta-data answer")
        notes.append("in GRUB the ';' must stay quoted (or be written \\;), else GRUB ends the command there")
        if net.mode == "static":
            cmdline += f" ip={net.ip}::{net.gateway or ''}:{net.netmask}:{host.name}:{net.iface}:none"
            grub = grub.replace(" ---", f" ip={net.ip}::{net.gateway or ''}:{net.netmask}:{host.name}:{net.iface}:none ---")
    else:
        cmdline = "autoinstall"
        grub = "linux /casper/vmlinuz autoinstall ---"
        notes.append("no os_install.kickstart_url: copy user-data and meta-data to the root of a second USB stick "
                     "labelled CIDATA; cloud-init finds it without a ds= argument")
    notes.append("without the word autoinstall, subiquity asks before it erases the disk")
    return {"kind": "ubuntu", "cmdline": cmdline, "grub": grub, "isolinux": None, "notes": notes}


def render_boot_args(params: Params, host: Host, target: Target, rel: str | None = None) -> str:
    b = boot_arguments(params, host, target, rel)
    L = [f"# Boot arguments for {host.name} ({target.distro} {target.version}), written by mlplat phase 05.", "",
         "# Kernel command line (what `cat /proc/cmdline` shows once booted):", b["cmdline"], "",
         "# UEFI (GRUB): press e on the install entry, make the linux line read:", b["grub"]]
    if b["isolinux"]:
        L += ["", "# BIOS (isolinux): press Tab on the install entry, make the append line read:", b["isolinux"]]
    L += [""] + [f"# note: {n}" for n in b["notes"]] + [""]
    return "\n".join(L)


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------

def _ks_compact(msg: str) -> str:
    """pykickstart's 'The following problem occurred on line N of the kickstart file:\\n\\nMSG' as
    'line N: MSG' (one line, for a table cell)."""
    m = re.match(r"\s*The following problem occurred on line (\d+) of the kickstart file:\s*(.*)", msg, re.S)
    if m:
        return f"line {m.group(1)}: " + " ".join(m.group(2).split())
    return " ".join(msg.split())


def validate_kickstart(text: str, version: str) -> tuple[bool | None, str]:
    """Check a Kickstart as `ksvalidator -v VERSION` does (same parser, warnings as errors, every
    error reported). Returns (ok, message); ok is None when pykickstart is not installed."""
    try:
        from pykickstart.errors import (KickstartDeprecationWarning, KickstartError, KickstartParseError,
                                        KickstartParseWarning)
        from pykickstart.parser import KickstartParser
        from pykickstart.version import makeVersion
    except ImportError:
        return None, "skipped: pykickstart not installed (pip install pykickstart)"
    handler = makeVersion(version)
    parser = KickstartParser(handler, followIncludes=False, errorsAreFatal=False)
    msgs: list[str] = []
    err = io.StringIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", category=KickstartParseWarning)
        with contextlib.redirect_stderr(err):
            try:
                parser.readKickstartFromString(text)
            except KickstartDeprecationWarning as e:
                msgs.append(f"File uses a deprecated option or command.\n{e}")
            except KickstartParseError as e:
                msgs.append(str(e))
            except KickstartError as e:
                msgs.append(f"General kickstart error in input file: {e}")
            except Exception as e:  # what ksvalidator reports as a general error
                msgs.append(f"General error in input file: {e}")
    problems = [_ks_compact(m) for m in re.split(r"\n(?=The following problem|There was a problem)", err.getvalue())
                if m.strip()] + [_ks_compact(m) for m in msgs]
    if parser.errorsCount or problems:
        return False, f"ksvalidator -v {version}: " + " | ".join(problems)
    return True, f"ksvalidator -v {version}: ok"


def schema_path() -> Path | None:
    """subiquity's autoinstall JSON schema: $MLPLAT_SHARED/fixtures/os-install/, else the shared
    folder next to the repository (../shared/fixtures/os-install/). None when neither has it."""
    cands = []
    if os.environ.get(SHARED_ENV):
        cands.append(Path(os.environ[SHARED_ENV]) / "fixtures" / "os-install" / SCHEMA_NAME)
    root = common.repo_root()
    cands += [root.parent / "shared" / "fixtures" / "os-install" / SCHEMA_NAME,
              root / "shared" / "fixtures" / "os-install" / SCHEMA_NAME]
    return next((c for c in cands if c.is_file()), None)


def validate_autoinstall(text: str, schema: Path | dict | None = None) -> tuple[bool | None, str]:
    """Check an autoinstall config against subiquity's JSON schema: a NoCloud user-data
    (`#cloud-config` with `autoinstall:`) or an autoinstall.yaml.
    Returns (ok, message); ok is None (skipped) when the schema is not available."""
    import jsonschema

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        return False, f"not valid YAML: {' '.join(str(e).split())}"
    if text.startswith("#cloud-config"):  # NoCloud user-data: the config sits under autoinstall:
        if not isinstance(data, dict) or not isinstance(data.get("autoinstall"), dict):
            return False, "user-data has no 'autoinstall:' mapping"
        config = data["autoinstall"]
    else:  # an autoinstall.yaml (on the ISO): the config itself, or under autoinstall:
        if isinstance(data, dict) and "version" not in data and isinstance(data.get("autoinstall"), dict):
            data = data["autoinstall"]
        if not isinstance(data, dict):
            return False, "the autoinstall config is not a mapping"
        config = data
    if schema is None:
        schema = schema_path()
        if schema is None:
            return None, f"skipped: schema not available ({SCHEMA_NAME} not found; set {SHARED_ENV})"
    if isinstance(schema, Path):
        schema = json.loads(schema.read_text())
    cls = jsonschema.validators.validator_for(schema)
    errors = sorted(cls(schema).iter_errors(config), key=lambda e: [str(x) for x in e.absolute_path])
    if errors:
        msgs = [f"autoinstall.{'.'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message}" for e in errors]
        return False, "autoinstall schema: " + " | ".join(msgs)
    return True, "autoinstall schema: ok"


# ---------------------------------------------------------------------------------------------
# Generation (plain functions; the notebook steps below wrap them)
# ---------------------------------------------------------------------------------------------

def default_run_dir() -> Path:
    return Path(os.environ.get(common.RUN_DIR_ENV) or common.repo_root() / "outputs" / "adhoc")


def _write(path: Path, text: str, secret: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if secret:
        path.chmod(0o600)  # it holds the root password hash


def plan_targets(params: Params, targets: str | list | None = None) -> list[Target]:
    """The targets to write: `targets` ("rocky-9,centos-7,ubuntu-24.04") or the params' OS."""
    if isinstance(targets, str):
        pairs = parse_targets(targets)
    else:
        pairs = list(targets or [])
    if not pairs:
        pairs = [(params.os.distro, params.os.version)]
    return [resolve_target(d, v) for d, v in pairs]


def _rel(host: Host, target: Target, many: bool) -> str:
    return f"{host.name}/{target.id}" if many else host.name


def write_files(params: Params, kind: str, run_dir: str | Path | None = None,
                targets: str | list | None = None, inputs: Inputs | None = None,
                base_dir: str | Path | None = None) -> list[StepResult]:
    """Render, write and validate the `kind` files ("kickstart" or "autoinstall") of every host for
    every target of that kind; one StepResult per host and target. Messages never hold the hash."""
    step = STEP_KS if kind == "kickstart" else STEP_AI
    tg = plan_targets(params, targets)
    many = len(tg) > 1
    mine = [t for t in tg if t.kind == kind]
    out_root = Path(run_dir or default_run_dir()) / "os-install"
    if not mine:
        have = ", ".join(f"{t.distro} {t.version}" for t in tg)
        return [skipped("(all hosts)", step, f"no {kind} target ({have})")]
    results: list[StepResult] = []
    if inputs is None:
        try:
            inputs = resolve_inputs(params, base_dir)
        except ValueError as e:
            return [failed(h.name, step, mask(str(e))) for h in params.hosts]
    for t in mine:
        for h in params.hosts:
            t0 = time.monotonic()
            rel = _rel(h, t, many)
            d = out_root / rel
            label = f"{t.distro} {t.version}"
            if not h.install_disk:
                results.append(failed(h.name, step, f"{label}: hosts[{h.name}].install_disk is not set; the install "
                                      "erases its disk and must not guess", data={"target": t.id}))
                continue
            net = host_network(params, h)
            if net.mode == "static" and not net.iface:
                results.append(failed(h.name, step, f"{label}: static address {net.address} but no interface: set "
                                      f"hosts[{h.name}].interface", data={"target": t.id}))
                continue
            try:
                if kind == "kickstart":
                    text = render_kickstart(params, h, t, inputs)
                    files = {"ks.cfg": text}
                    ok, msg = validate_kickstart(text, t.ks_version)
                else:
                    text = render_user_data(params, h, t, inputs)
                    files = {"user-data": text, "meta-data": render_meta_data(h)}
                    ok, msg = validate_autoinstall(text)
                for name, body in files.items():
                    _write(d / name, body, secret=bool(inputs.root_hash) and name in ("ks.cfg", "user-data"))
            except Exception as e:  # a rendering bug must show as this host's failure, not kill the cell
                results.append(failed(h.name, step, mask(f"{label}: {type(e).__name__}: {e}"), data={"target": t.id}))
                continue
            names = " + ".join(files)
            # On failure the validator's words come first: a table cell may be cut at its width.
            message = (f"{label}: {names} -> os-install/{rel}/; {msg}" if ok is not False
                       else f"{label}: {msg} (in os-install/{rel}/{names.split(' ')[0]})")
            if t.legacy:
                message += f"; warning: {CENTOS7_EOL}"
            r = StepResult(host=h.name, step=step, ok=ok is not False, skipped=ok is None, message=mask(message),
                           duration=time.monotonic() - t0,
                           data={"target": t.id, "dir": str(d), "files": [str(d / n) for n in files]})
            results.append(r)
    return results


def write_boot_args(params: Params, run_dir: str | Path | None = None,
                    targets: str | list | None = None) -> list[StepResult]:
    """Write boot-args.txt per host and target; the message is the kernel command line."""
    tg = [t for t in plan_targets(params, targets)]
    many = len(tg) > 1
    out_root = Path(run_dir or default_run_dir()) / "os-install"
    results = []
    for t in tg:
        for h in params.hosts:
            if t.kind is None:
                results.append(skipped(h.name, STEP_BOOT, t.why_not))
                continue
            rel = _rel(h, t, many)
            b = boot_arguments(params, h, t, rel)
            _write(out_root / rel / "boot-args.txt", render_boot_args(params, h, t, rel), secret=False)
            results.append(StepResult(host=h.name, step=STEP_BOOT, message=f"{t.distro} {t.version}: {b['cmdline']}",
                                      data={"target": t.id, "grub": b["grub"], "file": str(out_root / rel / "boot-args.txt")}))
    return results


def check_params(params: Params, targets: str | list | None = None,
                 base_dir: str | Path | None = None) -> list[StepResult]:
    """:func:`params_problems` on these params (forced: phase 05 needs its section), as results."""
    pairs = parse_targets(targets) if isinstance(targets, str) else list(targets or [])
    probs = params_problems(params.model_dump(mode="json", exclude_unset=False), force=True, targets=pairs or None,
                            base_dir=base_dir)
    if not probs:
        return [StepResult(host="(params)", step=STEP_PARAMS, message="os_install settings complete for every host")]
    return [failed("(params)", STEP_PARAMS, f"{p.path}: {p.message}; fix: {p.fix}") for p in probs]


def pitfalls(params: Params, log_text: str = "", cmdline: str | None = None) -> list[dict]:
    """Install-media pitfalls for these params: the diagnosis of `log_text` when given (causes the
    log proves first), else every known cause of the dracut '/dev/root does not exist' shell and of
    Ubuntu's autoinstall not starting, with the params' ISO label in them."""
    if log_text.strip():
        return diagnose_install_log(log_text, params, cmdline)
    return known_pitfalls(params.os_install.iso_volume_label)


# ---------------------------------------------------------------------------------------------
# Notebook steps
# ---------------------------------------------------------------------------------------------

def _ctx():
    return common.context(NUMBER)


def setup(params_file: str = "", mode: str = "plan", run_dir: str = "", targets: str = "", **_ignored) -> Table:
    """Load and validate the params; decide the targets. Phase 05 writes files only under the run
    directory and touches no host, in both modes."""
    ctx = common.setup(NUMBER, NAME, params_file, mode, run_dir)
    p = ctx.params
    ctx.extra["targets"] = targets
    ctx.extra["run_dir"] = Path(ctx.run_dir) if ctx.run_dir else default_run_dir()
    # A site whose hosts are installed has no os_install section: then this phase only says so.
    ctx.extra["active"] = bool(targets) or "os_install" in p.model_fields_set
    tg = plan_targets(p, targets)
    table = common.header_table(ctx)
    rows = list(table.frame.to_dict("records"))
    rows.append({"setting": "targets", "value": ", ".join(f"{t.distro} {t.version} ({t.kind or 'none'})" for t in tg)})
    rows.append({"setting": "files", "value": "os-install/<host>/" if len(tg) == 1 else "os-install/<host>/<target>/"})
    if not ctx.extra["active"]:
        rows.append({"setting": "status", "value": "no os_install section in the params: nothing to write"})
    if any(t.legacy for t in tg):
        ctx.phase.note(CENTOS7_EOL)
    return Table(pd.DataFrame(rows), table.title, status_col=None)


def _inactive(step: str) -> list[StepResult]:
    return [skipped("(all hosts)", step, "the params have no os_install section (hosts already installed); add one, "
                    "or set the notebook's targets, to write install files")]


def _inputs_or_error(ctx) -> Inputs | str:
    if "inputs" not in ctx.extra:
        try:
            ctx.extra["inputs"] = resolve_inputs(ctx.params, ctx.params_path.parent)
        except ValueError as e:
            ctx.extra["inputs"] = mask(str(e))
    return ctx.extra["inputs"]


def settings() -> Table:
    """The os_install settings checked for what would make an invalid or dangerous file."""
    ctx = _ctx()
    rows = (check_params(ctx.params, ctx.extra["targets"], ctx.params_path.parent) if ctx.extra["active"]
            else _inactive(STEP_PARAMS))
    return ctx.phase.record("params", rows, "Install settings")


def _files_step(kind: str, key: str, title: str) -> Table:
    ctx = _ctx()
    step = STEP_KS if kind == "kickstart" else STEP_AI
    if not ctx.extra["active"]:
        return ctx.phase.record(key, _inactive(step), title)
    inputs = _inputs_or_error(ctx)
    if isinstance(inputs, str):
        if any(t.kind == kind for t in plan_targets(ctx.params, ctx.extra["targets"])):
            rows = [failed(h.name, step, inputs) for h in ctx.params.hosts]
        else:
            rows = write_files(ctx.params, kind, ctx.extra["run_dir"], ctx.extra["targets"], Inputs([]))
    else:
        rows = write_files(ctx.params, kind, ctx.extra["run_dir"], ctx.extra["targets"], inputs)
    return ctx.phase.record(key, rows, title)


def kickstarts() -> Table:
    """Kickstart per host (Rocky/Alma/RHEL 8-9, CentOS 7), validated like ksvalidator."""
    return _files_step("kickstart", "kickstart", "Kickstart files")


def autoinstalls() -> Table:
    """Ubuntu autoinstall user-data + meta-data per host, validated against subiquity's schema."""
    return _files_step("autoinstall", "autoinstall", "Ubuntu autoinstall files")


def boot_args() -> Table:
    """boot-args.txt per host: the kernel command line, and the GRUB / isolinux lines."""
    ctx = _ctx()
    rows = (write_boot_args(ctx.params, ctx.extra["run_dir"], ctx.extra["targets"]) if ctx.extra["active"]
            else _inactive(STEP_BOOT))
    return ctx.phase.record("boot arguments", rows, "Boot arguments")


def show_files(hosts: int = 1) -> None:
    """Print the generated files of the first `hosts` hosts, password hashes masked."""
    ctx = _ctx()
    root = Path(ctx.extra["run_dir"]) / "os-install"
    if not ctx.extra["active"] or not root.is_dir():
        print("(no files written)")
        return
    names = [h.name for h in ctx.params.hosts]
    for name in names[:max(hosts, 0)]:
        for f in sorted(p for p in (root / name).rglob("*") if p.is_file()):
            print(f"===== os-install/{f.relative_to(root)} =====")
            print(mask(f.read_text()))
    rest = names[max(hosts, 0):]
    if rest:
        print(f"(files of {len(rest)} more host(s) under os-install/: {', '.join(rest)})")


def media_pitfalls(install_log: str = "", cmdline: str = "") -> Table:
    """The install-media pitfalls as a table; with `install_log` (a file path or pasted text), the
    causes that log shows come first, with the evidence."""
    ctx = _ctx()
    text = install_log
    if install_log and "\n" not in install_log and Path(os.path.expanduser(install_log)).is_file():
        text = Path(os.path.expanduser(install_log)).read_text(errors="replace")
    rows = pitfalls(ctx.params, text, cmdline or None)
    if text.strip():
        # Information for the operator, not a failure of this phase (its files can be fine).
        shown = [f"{r['id']}: {r['evidence']}" for r in rows if r["evidence"]]
        msg = "; ".join(shown) or ("no known install-media failure in the log" if not rows
                                   else "a known failure without proof of its cause: see the causes below")
        ctx.phase.record("install log", [StepResult(host="(install log)", step=STEP_LOG, message=mask(msg))])
    frame = pd.DataFrame([{"cause": r["cause"], "evidence": r["evidence"], "fix": r["fix"]} for r in rows],
                         columns=["cause", "evidence", "fix"])
    return Table(frame, "Install-media pitfalls" + (" in the given log" if text.strip() else ""), status_col=None)


def finish() -> None:
    """Write the verdict; the phase fails when a file failed validation or the settings are incomplete."""
    common.finish(NUMBER)
