"""Swap off, now (``swapoff -a``) and at boot (swap lines in /etc/fstab commented out): the kubelet
refuses to start with swap on unless told otherwise."""

from __future__ import annotations

from .base import Outcome, Run, Target, WriteFile, converged

FSTAB = "/etc/fstab"
MARK = "#mlplat-swapoff# "


def parse_proc_swaps(text: str) -> list[str]:
    """Active swap devices/files from /proc/swaps (header skipped)."""
    return [ln.split()[0] for ln in text.splitlines()[1:] if ln.strip()]


def is_swap_line(line: str) -> bool:
    s = line.strip()
    if not s or s.startswith("#"):
        return False
    f = s.split()
    return len(f) >= 3 and f[2] == "swap"


def fstab_without_swap(text: str) -> str:
    """fstab with every active swap entry commented out with a marker (so it can be found again)."""
    return "".join(MARK + ln if is_swap_line(ln) else ln for ln in text.splitlines(keepends=True))


def plan(t: Target) -> Outcome:
    actions = []
    active = parse_proc_swaps(t.remote.read("/proc/swaps") or "")
    if active:
        actions.append(Run("swapoff -a", f"turn off swap now ({', '.join(active)})"))
    fstab = t.remote.read(FSTAB)
    entries = []
    if fstab is not None:
        entries = [ln.split()[0] for ln in fstab.splitlines() if is_swap_line(ln)]
        if entries:
            actions.append(WriteFile(FSTAB, fstab_without_swap(fstab), fstab, backup=True))
            if t.has_systemd:
                # systemd made swap units from fstab at boot; regenerate them from the new file.
                actions.append(Run("systemctl daemon-reload", "regenerate systemd's units from /etc/fstab"))
    if not actions:
        return converged("no active swap, none in /etc/fstab")
    return Outcome(actions=actions, message=f"active: {', '.join(active) or 'none'}; "
                                            f"in fstab: {', '.join(entries) or 'none'}")
