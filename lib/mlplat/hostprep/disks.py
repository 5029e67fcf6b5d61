"""Disk growth: a partition (``growpart``), its LVM physical volume (``pvresize``), a logical volume
(``lvextend -r``, which grows the file system too) or a plain file system (``xfs_growfs`` /
``resize2fs``), for each ``disks:`` entry of the params. A no-op when everything is full size:
``growpart --dry-run`` says NOCHANGE, the PV fills its device, the VG has no free extents, the
file system fills its device.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Optional

from .base import Outcome, Run, Target, converged, fail, have, skip
from .packages import ensure_packages

# Below this much slack (or 1 %), a device counts as full: metadata and alignment never reach 0.
SLACK_BYTES = 16 << 20
GROWPART_PKG = {"debian": "cloud-guest-utils", "rhel": "cloud-utils-growpart"}
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


# -- parsers --------------------------------------------------------------------------------------

def parse_growpart(text: str) -> dict:
    """``growpart [--dry-run] DISK N`` output: {change: True/False, old_size, new_size (sectors)} from
    ``CHANGE:``/``CHANGED: partition=N start=S old: size=A end=E new: size=B end=F`` or
    ``NOCHANGE: ...`` (every released message format); change None when neither appears."""
    m = re.search(r"^(CHANGED?):\s*partition=(\d+).*?old:\s*size=(\d+).*?new:\s*size=(\d+)", text, re.M)
    if m:
        return {"change": True, "partition": int(m.group(2)), "old_size": int(m.group(3)),
                "new_size": int(m.group(4)), "done": m.group(1) == "CHANGED"}
    m = re.search(r"^NOCHANGE:\s*(.*)$", text, re.M)
    if m:
        return {"change": False, "reason": m.group(1).strip()}
    return {"change": None}


def lvm_size(v) -> Optional[int]:
    """An LVM size: bytes ('8589934592', '8589934592B'), or with units ('8.00g', '<2.00g')."""
    if v is None:
        return None
    s = str(v).strip().lstrip("<>").lower()
    m = re.match(r"^([\d.]+)\s*([bkmgtp]?)", s)
    if not m:
        return None
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def parse_lvm_json(text: str, kind: str) -> list[dict]:
    """Rows of ``pvs/lvs/vgs --reportformat json`` (kind: pv, lv, vg); prompts and LVM chatter around
    the JSON are ignored."""
    start = text.find("{")
    if start < 0:
        return []
    depth = 0
    for i, ch in enumerate(text[start:], start):
        depth += ch == "{"
        depth -= ch == "}"
        if depth == 0:
            data = json.loads(text[start:i + 1])
            break
    else:
        return []
    rows = []
    for rep in data.get("report", []):
        rows += rep.get(kind, [])
    return rows


def split_partition(device: str) -> tuple[str, int]:
    """'/dev/nvme0n1p3' -> ('/dev/nvme0n1', 3); '/dev/sda4' -> ('/dev/sda', 4)."""
    m = re.match(r"^(/dev/.*?\d)p(\d+)$", device) or re.match(r"^(/dev/\D+)(\d+)$", device)
    if not m:
        raise ValueError(f"{device!r} is not a partition device name (e.g. /dev/sda4, /dev/nvme0n1p3)")
    return m.group(1), int(m.group(2))


def parse_fs_bytes(text: str, fstype: str) -> Optional[int]:
    """A file system's size from ``xfs_info`` (data bsize × blocks) or ``dumpe2fs -h`` (Block count ×
    Block size)."""
    if fstype == "xfs":
        m = re.search(r"^data\s+=.*?bsize=(\d+)\s+blocks=(\d+)", text, re.M)
        return int(m.group(1)) * int(m.group(2)) if m else None
    bc = re.search(r"^Block count:\s+(\d+)", text, re.M)
    bs = re.search(r"^Block size:\s+(\d+)", text, re.M)
    return int(bc.group(1)) * int(bs.group(1)) if bc and bs else None


def vg_of(lv: str) -> str:
    """The VG of an LV path: '/dev/rootvg/rootlv' -> 'rootvg'; '/dev/mapper/root--vg-root' -> 'root-vg'."""
    m = re.match(r"^/dev/mapper/(.+?[^-])-([^-].*)$", lv)
    if m:
        return m.group(1).replace("--", "-")
    parts = lv.strip("/").split("/")
    return parts[1] if len(parts) == 3 and parts[0] == "dev" else parts[0]


def _lvextend(lv: str, vg: str, fstype: str) -> Run:
    q = shlex.quote(vg)
    # Checked again when it runs: after a NOCHANGE growpart the VG may still have nothing free.
    return Run(f"if [ \"$(vgs --noheadings -o vg_free_count {q} | tr -d ' ')\" -gt 0 ]; then "
               f"lvextend -r -l +100%FREE {shlex.quote(lv)}; fi",
               f"grow {lv} and its {fstype} into the free space of VG {vg}")


def _full(have: int, whole: int) -> bool:
    return whole - have <= max(SLACK_BYTES, whole // 100)


# -- the step -------------------------------------------------------------------------------------

def entries_for(t: Target):
    return [d for d in t.params.disks if d.grow and (d.host in (None, t.name))]


def plan(t: Target) -> Outcome:
    disks = entries_for(t)
    if not disks:
        return skip("no disks: entry for this host in the params (nothing to grow)")
    actions: list = []
    notes, warnings = [], []
    for d in disks:
        o = _plan_one(t, d)
        if o.skip:
            notes.append(f"{d.mount}: skipped: {o.skip}")
            continue
        if o.fail:
            return fail(f"{d.mount}: {o.fail}")
        actions += o.actions
        notes.append(f"{d.mount}: {o.message}")
        warnings += o.warnings
    if not actions:
        return converged("; ".join(notes), warnings)
    return Outcome(actions=actions, message="; ".join(notes), warnings=warnings)


def _plan_one(t: Target, d) -> Outcome:
    r = t.remote.run(f"findmnt -n -o SOURCE,FSTYPE --target {shlex.quote(d.mount)}")
    parts = r.stdout.split()
    if not r.ok or len(parts) < 2:
        return fail(f"not mounted (findmnt: {r.tail() or 'nothing'})")
    source, fstype = parts[0], parts[1]
    if fstype not in ("xfs", "ext4", "ext3"):
        return skip(f"{d.mount} is {fstype} on {source}, not a growable xfs/ext4 partition or LV "
                    "(a container's or lab's overlay has no real disk to grow)")
    if not t.remote.run(f"[ -b {shlex.quote(source)} ]").ok:
        return skip(f"{source} is not a block device here (no real disk to grow)")
    actions: list = []
    steps = []
    grow_part = False
    if d.device:
        try:
            disk, num = split_partition(d.device)
        except ValueError as e:
            return fail(str(e))
        pkg_actions = [] if have(t, "growpart") else ensure_packages(t, [GROWPART_PKG[t.family]], "install growpart")[0]
        actions += pkg_actions
        if pkg_actions:
            # growpart is missing, so it cannot dry-run yet: plan the real run, which says NOCHANGE
            # (exit 1) when the partition is already full; the check after apply reads that.
            actions.append(Run(f"growpart {disk} {num} || test $? -eq 1", f"grow partition {d.device}"))
            grow_part = True
        else:
            g = parse_growpart(t.remote.run(f"growpart --dry-run {disk} {num} 2>&1").stdout)
            if g["change"] is None:
                return fail(f"growpart --dry-run {disk} {num} said neither CHANGE nor NOCHANGE")
            if g["change"]:
                grow_part = True
                actions.append(Run(f"growpart {disk} {num}", f"grow partition {d.device} "
                                   f"({g['old_size']} -> {g['new_size']} sectors)"))
                steps.append(f"{d.device} can grow by {(g['new_size'] - g['old_size']) * 512 >> 20} MiB")
            else:
                steps.append(f"{d.device} full ({g['reason']})")
    if d.lv:
        pv_dev = d.device
        if grow_part:
            # The partition grows first, so its PV and LV grow after it: no need to look at LVM now.
            if pv_dev:
                actions.append(Run(f"pvresize {shlex.quote(pv_dev)}", f"grow the PV {pv_dev}"))
            vg = vg_of(d.lv)
            actions.append(_lvextend(d.lv, vg, fstype))
        else:
            if pv_dev:
                pvs = parse_lvm_json(t.remote.run(
                    f"pvs --reportformat json --units b --nosuffix -o pv_name,vg_name,pv_size,dev_size "
                    f"{shlex.quote(pv_dev)}").stdout, "pv")
                pv = next((p for p in pvs if p.get("pv_name") == pv_dev), None)
                if pv is None:
                    return fail(f"{pv_dev} is not an LVM physical volume (pvs shows nothing)")
                if not _full(lvm_size(pv["pv_size"]) or 0, lvm_size(pv.get("dev_size")) or 0):
                    actions.append(Run(f"pvresize {shlex.quote(pv_dev)}", f"grow the PV {pv_dev}"))
                else:
                    steps.append(f"PV {pv_dev} fills its partition")
            lvs = parse_lvm_json(t.remote.run(
                f"lvs --reportformat json --units b --nosuffix -o lv_path,lv_size,vg_name,vg_free,vg_extent_size "
                f"{shlex.quote(d.lv)}").stdout, "lv")
            lv = lvs[0] if lvs else None
            if lv is None:
                return fail(f"{d.lv} is not a logical volume (lvs shows nothing)")
            extent = lvm_size(lv.get("vg_extent_size")) or (4 << 20)
            if actions or (lvm_size(lv.get("vg_free")) or 0) >= extent:
                actions.append(_lvextend(d.lv, lv.get("vg_name") or vg_of(d.lv), fstype))
            else:
                steps.append(f"VG {lv.get('vg_name')} has no free extents")
    else:
        dev_bytes = t.remote.run(f"blockdev --getsize64 {shlex.quote(source)}").stdout.strip()
        probe = (f"xfs_info {shlex.quote(d.mount)}" if fstype == "xfs" else f"dumpe2fs -h {shlex.quote(source)} 2>/dev/null")
        fs_bytes = parse_fs_bytes(t.remote.run(probe).stdout, fstype)
        if grow_part or (dev_bytes.isdigit() and fs_bytes is not None and not _full(fs_bytes, int(dev_bytes))):
            cmd = f"xfs_growfs {shlex.quote(d.mount)}" if fstype == "xfs" else f"resize2fs {shlex.quote(source)}"
            actions.append(Run(cmd, f"grow the {fstype} file system on {d.mount}"))
        else:
            steps.append(f"{fstype} fills {source}")
    msg = "; ".join(steps) or "will grow"
    return Outcome(actions=actions, message=msg)
