"""Host facts: OS, kernel, CPU, memory, disks, file systems, NICs, GPUs, in one SSH round trip.

:data:`FACTS_SCRIPT` is a POSIX shell script that prints each probe's output under a
``@@mlplat-facts <section>@@`` line; :func:`parse_facts` turns that text into a dict with pure
functions (``parse_os_release``, ``parse_lspci``, ``parse_nvidia_smi_csv``, ``parse_lsblk``,
``parse_df``, ``parse_ip_json``...), each tested on real recorded outputs. The probes are chosen to
exist on every supported OS, CentOS 7 included (``lsblk -P`` rather than ``-J``, ``ip -o`` when
``ip -j`` is missing, PCI from sysfs when ``lspci`` is missing) and to be bounded in time
(``timeout`` around ``df`` and ``nvidia-smi``, which can hang on a dead NFS mount or driver).
Small files are read with shell builtins: on a many-host lab sharing a few CPUs, every process
started per host counts.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable

import pandas as pd

from ..params.schema import Host
from ..report.results import StepResult, Table

_SECTION_RE = re.compile(r"^@@mlplat-facts (\S+)@@$", re.M)

NVIDIA_VENDOR = "10de"
GPU_CLASSES = ("0300", "0302")  # VGA compatible controller, 3D controller
NVIDIA_SMI_FIELDS = ("index", "name", "uuid", "memory.total", "driver_version")
LSBLK_COLUMNS = "NAME,KNAME,TYPE,SIZE,ROTA,MODEL,FSTYPE,MOUNTPOINT"
# File systems that say nothing about a server's storage.
PSEUDO_FS = {"tmpfs", "devtmpfs", "proc", "sysfs", "cgroup", "cgroup2", "devpts", "mqueue", "debugfs",
             "securityfs", "configfs", "pstore", "bpf", "tracefs", "hugetlbfs", "fusectl", "autofs",
             "binfmt_misc", "efivarfs", "selinuxfs", "rpc_pipefs", "nsfs", "squashfs", "ramfs"}

FACTS_SCRIPT = r"""
s() { printf '\n@@mlplat-facts %s@@\n' "$1"; }
have() { command -v "$1" >/dev/null 2>&1; }
t() { if have timeout; then timeout "$@"; else shift; "$@"; fi; }
export LC_ALL=C
cat_() { while IFS= read -r l || [ -n "$l" ]; do printf '%s\n' "$l"; done < "$1"; }
s hostname; cat_ /proc/sys/kernel/hostname
s os-release; if [ -r /etc/os-release ]; then cat_ /etc/os-release; else cat_ /usr/lib/os-release; fi
s uname; uname -rm
s cpu; awk -F': *' '/^processor/{n++} /^model name/&&!m{m=$2} /^flags/&&!f{f=($0 ~ / hypervisor/)} END{print n; print m; print (f ? "hypervisor" : "")}' /proc/cpuinfo
s meminfo; while read -r k v u; do case "$k" in MemTotal:) echo "$v";; esac; done < /proc/meminfo
s init; read -r c < /proc/1/comm && echo "$c"; [ -d /run/systemd/system ] && echo systemd-booted
s virt; for f in sys_vendor product_name; do [ -r /sys/class/dmi/id/$f ] && read -r v < /sys/class/dmi/id/$f && echo "$f=$v"; done
[ -e /.dockerenv ] && echo container=docker; [ -e /run/.containerenv ] && echo container=podman
s lsblk; lsblk -P -b -o __LSBLK__ 2>&1
s df; t 10 df -lPTk 2>/dev/null
s ip; ip -j addr 2>/dev/null || { ip -o link; echo '@@ip-o-addr@@'; ip -o addr; }
s pci; if have lspci; then lspci -nn 2>&1; else
  for d in /sys/bus/pci/devices/*; do [ -r "$d/class" ] || continue; read -r c < "$d/class"; read -r v < "$d/vendor"; read -r i < "$d/device"; echo "sysfs ${d##*/} $c $v $i"; done; fi
s nvidia-smi; if have nvidia-smi; then t 20 nvidia-smi --query-gpu=__NVSMI__ --format=csv,noheader 2>&1; echo "exit=$?"; else echo absent; fi
s end
""".replace("__LSBLK__", LSBLK_COLUMNS).replace("__NVSMI__", ",".join(NVIDIA_SMI_FIELDS))


# -- pure parsers -------------------------------------------------------------------------------

def split_sections(text: str) -> dict[str, str]:
    """The facts script's output as {section: body}."""
    out: dict[str, str] = {}
    marks = list(_SECTION_RE.finditer(text))
    for m, nxt in zip(marks, marks[1:] + [None]):
        body = text[m.end(): nxt.start() if nxt else len(text)]
        out[m.group(1)] = body.strip("\n")
    return out


def parse_os_release(text: str) -> dict:
    """/etc/os-release as a dict of its keys (quotes removed), plus ``family``: rhel or debian (from
    ID and ID_LIKE), or the ID itself for anything else."""
    kv: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        k, v = line.split("=", 1)
        try:
            v = " ".join(shlex.split(v)) if v else ""
        except ValueError:
            v = v.strip("\"'")
        kv[k.strip()] = v
    kv["family"] = os_family(kv.get("ID", ""), kv.get("ID_LIKE", ""))
    return kv


def os_family(os_id: str, id_like: str = "") -> str:
    """rhel for the Red Hat family (rhel, centos, rocky, almalinux, fedora and their ID_LIKE kin),
    debian for Debian and Ubuntu kin, else the ID."""
    ids = [os_id.lower()] + id_like.lower().split()
    if any(i in ("rhel", "centos", "fedora", "rocky", "almalinux", "ol") for i in ids):
        return "rhel"
    if any(i in ("debian", "ubuntu") for i in ids):
        return "debian"
    return os_id.lower()


_LSPCI_RE = re.compile(
    r"^(?P<slot>[0-9a-fA-F:.]+)\s+(?P<class_name>[^\[:]+?)(?:\s*\[(?P<class>[0-9a-fA-F]{4})\])?:\s*"
    r"(?P<description>.*?)(?:\s*\[(?P<vendor>[0-9a-fA-F]{4}):(?P<device>[0-9a-fA-F]{4})\])?(?:\s*\(rev (?P<rev>[0-9a-fA-F]+)\))?\s*$")


def parse_lspci(text: str) -> list[dict]:
    """PCI devices from ``lspci`` (``-nn`` gives class and vendor:device ids; ``-k`` detail lines
    and ``--`` separators are skipped) or from the facts script's sysfs fallback lines
    (``sysfs <slot> 0x030200 0x10de 0x20b0``). Each: slot, class, class_name, vendor, device,
    description, rev (ids lower-case hex, None when absent)."""
    out = []
    for line in text.splitlines():
        if not line.strip() or line[0].isspace() or line.startswith("--"):
            continue
        if line.startswith("sysfs "):
            f = line.split()
            if len(f) >= 5:
                out.append({"slot": f[1], "class": f[2].lower().removeprefix("0x")[:4], "class_name": None,
                            "vendor": f[3].lower().removeprefix("0x"), "device": f[4].lower().removeprefix("0x"),
                            "description": "", "rev": None})
            continue
        m = _LSPCI_RE.match(line)
        if m:
            d = m.groupdict()
            for k in ("class", "vendor", "device", "rev"):
                d[k] = d[k].lower() if d[k] else None
            out.append(d)
    return out


def nvidia_gpus(devices: Iterable[dict]) -> list[dict]:
    """The NVIDIA GPUs among PCI devices: vendor 10de, class 0300 (VGA) or 0302 (3D controller)."""
    return [d for d in devices if d.get("vendor") == NVIDIA_VENDOR and d.get("class") in GPU_CLASSES]


def _na(v: str) -> str | None:
    v = v.strip()
    return None if v in ("", "N/A", "[N/A]") or v.startswith("[") and v.endswith("]") else v


def _field_key(name: str) -> str:
    return re.sub(r"\s*\[.*?\]\s*$", "", name.strip())


def parse_nvidia_smi_csv(text: str, fields: Iterable[str] = NVIDIA_SMI_FIELDS) -> list[dict]:
    """Rows of ``nvidia-smi --query-gpu=... --format=csv[,noheader]``.

    A header line (``name, uuid, memory.total [MiB]``, units dropped) names the columns; without
    one, `fields` does. Values: N/A and bracketed notes become None; ``index`` and
    ``count`` become int; ``memory.total`` is also given as ``memory_total_mib`` (int)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return []
    names = list(fields)
    first = [_field_key(c) for c in lines[0].split(",")]
    if "name" in first or "index" in first or "uuid" in first:
        names, lines = first, lines[1:]
    rows = []
    for line in lines:
        vals = [v.strip() for v in line.split(",")]
        if len(vals) != len(names):
            continue  # an error line (e.g. "NVIDIA-SMI has failed...") has no commas to match
        row: dict = {}
        for k, v in zip(names, vals):
            row[k] = _na(v)
        for k in ("index", "count"):
            if row.get(k) is not None and row[k].isdigit():
                row[k] = int(row[k])
        mem = row.get("memory.total")
        if mem is not None:
            m = re.match(r"(\d+)\s*(MiB)?$", mem)
            row["memory_total_mib"] = int(m.group(1)) if m else None
        rows.append(row)
    return rows


_PAIR_RE = re.compile(r'([A-Z0-9:_-]+)="((?:[^"\\]|\\.)*)"')
_SIZE_RE = re.compile(r"^([\d.]+)\s*([BKMGTPE]?)i?B?$", re.I)
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50, "E": 1 << 60}


def size_bytes(value) -> int | None:
    """A size from lsblk: bytes (``-b``), or human units (``149G``, ``148.5G``, ``1024M``)."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return int(value)
    m = _SIZE_RE.match(str(value).strip())
    if not m:
        return None
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def _gib(n: float | None) -> float | None:
    return None if n is None else round(n / (1 << 30), 1)


def _device(d: dict) -> dict:
    mps = d.get("mountpoints")
    if mps is None:
        mps = [d.get("mountpoint")]
    mounts = [m for m in mps if m]
    rota = d.get("rota")
    return {"name": d.get("name"), "kname": d.get("kname"), "type": d.get("type"),
            "size_gib": _gib(size_bytes(d.get("size"))), "rotational": None if rota in (None, "") else str(rota) in ("1", "True", "true"),
            "model": (d.get("model") or "").strip() or None, "fstype": d.get("fstype") or None,
            "mountpoints": mounts}


def parse_lsblk(text: str) -> list[dict]:
    """Block devices from ``lsblk -P`` (KEY="value" pairs; noise lines such as ``lsblk: dm-0:
    failed to get device path`` skipped) or ``lsblk -J`` (children flattened). Each: name, kname,
    type, size_gib, rotational, model, fstype, mountpoints (list)."""
    s = text.strip()
    if s.startswith("{"):
        out: list[dict] = []

        def walk(items):
            for d in items or []:
                out.append(_device({k.lower(): v for k, v in d.items() if k != "children"}))
                walk(d.get("children"))

        walk(json.loads(s).get("blockdevices"))
        return out
    out = []
    for line in s.splitlines():
        pairs = _PAIR_RE.findall(line)
        if not pairs:
            continue
        d = {k.lower(): bytes(v, "utf-8").decode("unicode_escape") if "\\" in v else v for k, v in pairs}
        out.append(_device(d))
    return out


def parse_df(text: str) -> list[dict]:
    """File systems from ``df -P`` (with or without ``-T``; 1024- or 512-blocks): filesystem,
    fstype, mount, size_gib, used_gib, free_gib, use_pct. Error lines and lines without sizes
    (``-`` from ``df -a``) are skipped; mount points may contain spaces."""
    lines = text.splitlines()
    head_i = next((i for i, ln in enumerate(lines) if ln.startswith("Filesystem")), None)
    if head_i is None:
        return []
    head = lines[head_i].split()
    typed = len(head) > 1 and head[1] == "Type"
    m = re.search(r"(\d+)-blocks", lines[head_i])
    unit = int(m.group(1)) if m else 1024
    rx = re.compile(r"^(\S+)\s+" + (r"(\S+)\s+" if typed else r"()") +
                    r"(\d+)\s+(\d+)\s+(\d+)\s+(\d+)%\s+(/.*)$")
    out = []
    for ln in lines[head_i + 1:]:
        r = rx.match(ln)
        if not r:
            continue
        fs, fstype, size, used, free, pct, mount = r.groups()
        out.append({"filesystem": fs, "fstype": fstype or None, "mount": mount,
                    "size_gib": _gib(int(size) * unit), "used_gib": _gib(int(used) * unit),
                    "free_gib": _gib(int(free) * unit), "use_pct": int(pct)})
    return out


def parse_ip_json(text: str, include_loopback: bool = False) -> list[dict]:
    """NICs from ``ip -j addr``: name, mac, state, mtu, addresses (``addr/prefix``)."""
    out = []
    for link in json.loads(text or "[]"):
        if link.get("link_type") == "loopback" and not include_loopback:
            continue
        out.append({
            "name": link.get("ifname"), "mac": link.get("address"), "state": link.get("operstate"),
            "mtu": link.get("mtu"),
            "addresses": [f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", []) if "local" in a],
        })
    return out


def parse_ip_oneline(link_text: str, addr_text: str, include_loopback: bool = False) -> list[dict]:
    """NICs from ``ip -o link`` and ``ip -o addr`` (older iproute2 without ``-j``)."""
    nics: dict[str, dict] = {}
    for ln in link_text.splitlines():
        m = re.match(r"^\d+:\s+([^:@\s]+)(?:@\S+)?:\s+<[^>]*>.*?mtu (\d+).*?state (\S+).*?link/(\S+)(?:\s+(\S+))?", ln)
        if m:
            name, mtu, state, kind, mac = m.groups()
            if kind == "loopback" and not include_loopback:
                continue
            nics[name] = {"name": name, "mac": mac if kind != "none" else None, "state": state,
                          "mtu": int(mtu), "addresses": []}
    for ln in addr_text.splitlines():
        m = re.match(r"^\d+:\s+(\S+)\s+inet6?\s+(\S+)", ln)
        if m and m.group(1) in nics:
            nics[m.group(1)]["addresses"].append(m.group(2))
    return list(nics.values())


_HYPERVISORS = (("qemu", "kvm"), ("kvm", "kvm"), ("vmware", "vmware"), ("virtualbox", "oracle"),
                ("innotek", "oracle"), ("xen", "xen"), ("amazon ec2", "amazon"), ("google", "google"),
                ("openstack", "openstack"), ("microsoft corporation virtual machine", "microsoft"),
                ("firecracker", "firecracker"), ("bochs", "bochs"), ("parallels", "parallels"))


def parse_virt(text: str, hypervisor_flag: bool = False) -> str:
    """What the host runs on, from the facts script's ``virt`` lines (DMI ``sys_vendor=`` and
    ``product_name=``, ``container=``) and the CPU's hypervisor flag: a container kind, a
    hypervisor (kvm, vmware, microsoft, amazon...), ``vm`` (flag only), or ``none`` (bare metal)."""
    kv = dict(ln.split("=", 1) for ln in text.splitlines() if "=" in ln)
    if "container" in kv:
        return f"container ({kv['container']})"
    dmi = f"{kv.get('sys_vendor', '')} {kv.get('product_name', '')}".strip().lower()
    for needle, name in _HYPERVISORS:
        if needle in dmi:
            return name
    return "vm" if hypervisor_flag else "none"


def parse_facts(text: str) -> dict:
    """The facts script's whole output as one dict (see :func:`gather_facts` for the keys)."""
    sec = split_sections(text)
    osr = parse_os_release(sec.get("os-release", ""))
    kernel, _, arch = sec.get("uname", "").strip().partition(" ")
    cpu = (sec.get("cpu", "").splitlines() + ["", "", ""])[:3]
    mem_kib = sec.get("meminfo", "").strip()
    init = sec.get("init", "").split()
    pci = parse_lspci(sec.get("pci", ""))
    gpus = nvidia_gpus(pci)
    smi_text = sec.get("nvidia-smi", "absent").strip()
    smi: list[dict] | None = None
    smi_error = None
    if smi_text != "absent":
        body, _, code = smi_text.rpartition("exit=")
        smi = parse_nvidia_smi_csv(body)
        if code.strip() != "0":
            smi_error = body.strip() or f"nvidia-smi exited {code.strip()}"
    ip_text = sec.get("ip", "").strip()
    if ip_text.startswith("["):
        nics = parse_ip_json(ip_text)
    else:
        link_text, _, addr_text = ip_text.partition("@@ip-o-addr@@")
        nics = parse_ip_oneline(link_text, addr_text)
    disks = [d for d in parse_lsblk(sec.get("lsblk", "")) if d["type"] not in ("loop", "rom", "ram")]
    filesystems = [f for f in parse_df(sec.get("df", "")) if (f["fstype"] or "") not in PSEUDO_FS]
    virtualization = parse_virt(sec.get("virt", ""), cpu[2] == "hypervisor")
    return {
        "hostname": sec.get("hostname", "").strip(),
        "os_id": osr.get("ID"), "os_version": osr.get("VERSION_ID"), "os_pretty": osr.get("PRETTY_NAME"),
        "os_family": osr.get("family"), "kernel": kernel or None, "arch": arch or None,
        "cpu_model": cpu[1] or None, "cpus": int(cpu[0]) if cpu[0].isdigit() else None,
        "mem_gib": round(int(mem_kib) / (1 << 20), 1) if mem_kib.isdigit() else None,
        "disks": disks, "filesystems": filesystems, "nics": nics,
        "pci_gpus": gpus, "nvidia_smi": smi, "nvidia_smi_error": smi_error,
        "gpu_count": len(smi) if smi else len(gpus),
        "pid1": init[0] if init else None,
        "has_systemd": bool(init) and (init[0] == "systemd" or "systemd-booted" in init),
        "virtualization": virtualization,
    }


# -- gathering and showing ----------------------------------------------------------------------

def gather_facts(pool, step: str = "facts | gather", hosts=None, timeout: float = 60.0) -> list[StepResult]:
    """Gather every host's facts in one SSH round trip per host, in parallel (`pool`: a
    :class:`~mlplat.hosts.HostPool`). An ok result's ``data`` holds: hostname, os_id, os_version,
    os_pretty, os_family, kernel, arch, cpu_model, cpus, mem_gib, disks, filesystems, nics,
    pci_gpus, nvidia_smi (rows, or None when absent), nvidia_smi_error, gpu_count (nvidia-smi's
    count where present, else PCI's), pid1, has_systemd, virtualization."""

    def one(conn, host: Host) -> StepResult:
        # Through sh: the script is POSIX whatever the login shell (bash, zsh, fish...).
        r = conn.run(f"sh -c {shlex.quote(FACTS_SCRIPT)}", timeout=timeout)
        if "@@mlplat-facts end@@" not in r.stdout:
            raise RuntimeError(f"facts script did not finish (exit {r.exit}): {r.stderr.strip()[-300:]}")
        facts = parse_facts(r.stdout)
        return StepResult(host=host.name, step=step, message=_summary(facts), duration=r.duration, data=facts)

    return pool.run(one, step, hosts)


def _summary(f: dict) -> str:
    return (f"{f.get('os_pretty') or f.get('os_id')}, kernel {f.get('kernel')}, {f.get('cpus')} CPUs, "
            f"{f.get('mem_gib')} GiB, {f.get('gpu_count')} GPUs")


def _gpus_text(f: dict) -> str:
    smi = f.get("nvidia_smi")
    if f.get("nvidia_smi_error"):
        return f"nvidia-smi failed: {f['nvidia_smi_error'][:80]}"
    if smi is None:
        return "absent"
    if not smi:
        return "0"
    names = sorted({r.get("name") or "?" for r in smi})
    drivers = sorted({r.get("driver_version") or "?" for r in smi})
    return f"{len(smi)}x {', '.join(names)} (driver {', '.join(drivers)})"


def _pci_text(f: dict) -> str:
    gpus = f.get("pci_gpus") or []
    if not gpus:
        return "0"
    counts: dict[str, int] = {}
    for g in gpus:
        label = g.get("description") or f"{g.get('vendor')}:{g.get('device')}"
        counts[label] = counts.get(label, 0) + 1
    return ", ".join(f"{n}x {label}" for label, n in counts.items())


def facts_table(results: Iterable[StepResult], title: str = "Host facts") -> Table:
    """One row per host: host, status, os, kernel, cpus, mem_gib, disks, root (free of size, GiB),
    nics (name and addresses), pci_gpus, nvidia_smi. Failed hosts show their message instead."""
    columns = ["host", "status", "os", "kernel", "cpus", "mem_gib", "disks", "root_free_gib", "nics",
               "pci_gpus", "nvidia_smi"]
    rows = []
    for r in results:
        if not r.ok or r.skipped or not r.data:
            rows.append({**dict.fromkeys(columns, ""), "host": r.host, "status": r.status, "os": r.message})
            continue
        f = r.data
        root = next((x for x in f.get("filesystems", []) if x["mount"] == "/"), None)
        disks = [d for d in f.get("disks", []) if d.get("type") == "disk"]
        rows.append({
            "host": r.host, "status": r.status,
            "os": f"{f.get('os_pretty') or f.get('os_id')} ({f.get('os_family')})",
            "kernel": f"{f.get('kernel')} {f.get('arch')}",
            "cpus": f.get("cpus"), "mem_gib": f.get("mem_gib"),
            "disks": ", ".join(f"{d['name']} {d['size_gib']:g}G" for d in disks if d.get("size_gib")) or "-",
            "root_free_gib": f"{root['free_gib']:g} of {root['size_gib']:g}" if root else "-",
            "nics": "; ".join(f"{n['name']} {' '.join(n['addresses']) or '(no address)'}" for n in f.get("nics", [])) or "-",
            "pci_gpus": _pci_text(f),
            "nvidia_smi": _gpus_text(f),
        })
    return Table(pd.DataFrame(rows, columns=columns), title)
