"""Run :class:`~mlplat.cluster.kubeadm.HostStep` plans over a HostPool: probe first, then (in apply
mode) write the files that differ and run the commands, stopping at the first failure.

Plan mode runs only the read-only probe and reads the files the step would write, so its table
says what would change (with a diff) and touches nothing.
"""

from __future__ import annotations

import difflib
import shlex
import time
from collections import defaultdict
from typing import Callable

from ..hosts import HostPool
from ..hosts.ssh import HostConnection
from ..params.schema import Host
from ..report import StepResult, failed
from .kubeadm import HostStep, PlanFile, mask

MAX_OUTPUT = 20000


def _read(conn: HostConnection, path: str) -> str | None:
    r = conn.sudo(f"cat {shlex.quote(path)} 2>/dev/null || echo __MLPLAT_ABSENT__ >&2; true", timeout=60)
    if "__MLPLAT_ABSENT__" in r.stderr:
        return None
    return r.stdout


def _diff(old: str | None, new: str, f: PlanFile) -> str:
    a = (mask(old) if f.secret and old else old or "").splitlines(keepends=True)
    b = (mask(new) if f.secret else new).splitlines(keepends=True)
    return "".join(difflib.unified_diff(a, b, fromfile=f"host/{f.path}", tofile=f"desired/{f.path}"))


def run_step(conn: HostConnection, s: HostStep, apply: bool, captured: dict | None = None) -> StepResult:
    """One HostStep on one host. ``data`` holds the probe's stdout (``probe``); a capturing step's
    output goes into ``captured`` only."""
    t0 = time.monotonic()
    data: dict = {"commands": [mask(c) for c in s.commands], "files": [f.path for f in s.files]}
    converged = False
    if s.probe:
        p = conn.sudo(s.probe, timeout=120)
        data["probe"] = p.stdout[-MAX_OUTPUT:]
        data["probe_exit"] = p.exit
        converged = p.exit == 0
        if converged and not s.files_when_converged:
            return StepResult(host=s.host, step=s.step, message=f"unchanged: {s.probe_means}", data=data,
                              duration=time.monotonic() - t0)
    diffs = []
    to_write = []
    for f in s.files:
        old = _read(conn, f.path)
        if old != f.content:
            to_write.append(f)
            diffs.append(_diff(old, f.content, f))
    if converged:
        if not to_write:
            return StepResult(host=s.host, step=s.step, message=f"unchanged: {s.probe_means}", data=data,
                              duration=time.monotonic() - t0)
        s = HostStep(**{**s.__dict__, "commands": []})
    if not apply:
        what = []
        if to_write:
            what.append("would write " + ", ".join(f.path for f in to_write))
        if s.commands:
            what.append("would run " + "; ".join(mask(c) for c in s.commands))
        return StepResult(host=s.host, step=s.step, changed=bool(to_write or s.commands),
                          message="; ".join(what) or "nothing to do", diff="".join(diffs), data=data,
                          duration=time.monotonic() - t0)
    for f in to_write:
        conn.write_file(f.path, f.content, f.mode)
    out = ""
    for c in s.commands:
        r = conn.sudo(c, timeout=None)
        out = r.stdout
        if not r.ok:
            data["failed_command"] = mask(c)
            data["output"] = (r.stdout + r.stderr)[-MAX_OUTPUT:]
            return failed(s.host, s.step, f"{mask(c)}: {mask(r.summary())}", diff="".join(diffs), data=data,
                          duration=time.monotonic() - t0)
    if s.capture and captured is not None:
        captured[s.capture] = out  # in memory only: it may hold a token or credentials
    done = ([f"wrote {', '.join(f.path for f in to_write)}"] if to_write else []) + (
        [f"ran {len(s.commands)} command(s)"] if s.commands else [])
    return StepResult(host=s.host, step=s.step, changed=True, message="; ".join(done) or "done",
                      diff="".join(diffs), data=data, duration=time.monotonic() - t0)


def run_steps(pool: HostPool, steps: list[HostStep], apply: bool, step: str,
              captured: dict | None = None) -> list[StepResult]:
    """Every step, hosts in parallel; the steps of one host in order, stopping at its first failure."""
    by_host: dict[str, list[HostStep]] = defaultdict(list)
    for s in steps:
        by_host[s.host].append(s)

    def one(conn: HostConnection, host: Host) -> list[StepResult]:
        out = []
        for s in by_host[host.name]:
            r = run_step(conn, s, apply, captured)
            out.append(r)
            if not r.ok:
                break
        return out

    return pool.run(one, step, hosts=list(by_host)) if by_host else []


def sh_each(pool: HostPool, command: Callable[[Host], str | None], step: str, hosts=None,
            timeout: float | None = 300) -> list[StepResult]:
    """A read-only shell command per host (None: nothing to run there); stdout in ``data``."""

    def one(conn: HostConnection, host: Host) -> StepResult:
        cmd = command(host)
        if cmd is None:
            return StepResult(host=host.name, step=step, skipped=True, message="skipped: nothing to run here")
        r = conn.sudo(cmd, timeout=timeout)
        return StepResult(host=host.name, step=step, ok=r.ok, message=r.summary(), data=r.data())

    return pool.run(one, step, hosts)
