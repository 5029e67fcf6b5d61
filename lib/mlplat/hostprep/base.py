"""Probe, plan, act, verify: the machinery every host-prep and GPU-runtime step shares.

A step is a *planner*: a function ``plan(t: Target) -> Outcome`` that only reads the host (files,
read-only commands) and returns what it would change: files to write and commands to run, in
order. It never acts. :func:`execute` turns a planner into a per-host :class:`StepResult`:

- plan mode: the outcome is reported (``changed`` = something would change, ``diff`` = unified
  diffs of the files and the commands, prefixed ``$``); nothing is written or run;
- apply mode: the actions run in order (the first failing one stops the step on that host), then
  the planner runs again as the verification: a step whose second plan is not empty failed.

So "second run changes nothing" holds by construction for every step whose planner is honest,
and plan mode cannot change a host: a planner only gets read access (:class:`Remote` reads;
:func:`execute` alone writes and runs actions).

The :class:`Remote` interface (run as root / read a file / write a file) is what a planner sees of
a host. :class:`SSHRemote` is the real one over :class:`mlplat.hosts.HostConnection`; tests use
a recorded one (``tests/hostprep/fakes.py``) fed with real command outputs.
"""

from __future__ import annotations

import difflib
import re
import shlex
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol, Union

from ..hosts.ssh import CommandFailed
from ..params.schema import Host, Params
from ..report import StepResult, failed, skipped

ABSENT_EXIT = 3  # exit status of the read command for a missing file
# Originals of files mlplat rewrites, kept once (not beside them: apt and dnf would read a copy in
# sources.list.d or yum.repos.d).
BACKUP_DIR = "/var/lib/mlplat/orig"
OUTPUT_CHARS = 600


# -- what a step sees of a host -------------------------------------------------------------------

@dataclass
class Output:
    """One command's result as a planner sees it."""

    stdout: str
    stderr: str = ""
    exit: int = 0

    @property
    def ok(self) -> bool:
        return self.exit == 0

    def tail(self, n: int = 3) -> str:
        text = (self.stderr if not self.ok and self.stderr.strip() else self.stdout).strip()
        t = " | ".join(text.splitlines()[-n:])
        return t if len(t) <= OUTPUT_CHARS else "..." + t[-OUTPUT_CHARS:]


class Remote(Protocol):
    """A host as the steps see it: commands run as root, files read and written as root."""

    name: str

    def run(self, command: str, timeout: Optional[float] = None) -> Output: ...

    def read(self, path: str) -> Optional[str]: ...

    def write(self, path: str, content: str, mode: int = 0o644) -> None: ...


def read_command(path: str) -> str:
    q = shlex.quote(path)
    return f"if [ -e {q} ]; then cat -- {q}; else exit {ABSENT_EXIT}; fi"


class SSHRemote:
    """A :class:`Remote` over an open :class:`mlplat.hosts.HostConnection` (sudo when not root)."""

    def __init__(self, conn, timeout: Optional[float] = None):
        self.conn = conn
        self.name = conn.name
        self.timeout = timeout

    def run(self, command: str, timeout: Optional[float] = None) -> Output:
        # LC_ALL=C: the parsers read English, untranslated output.
        r = self.conn.sudo(f"export LC_ALL=C LANG=C; {command}", timeout=timeout or self.timeout)
        return Output(r.stdout, r.stderr, r.exit)

    def read(self, path: str) -> Optional[str]:
        r = self.conn.sudo(read_command(path), timeout=self.timeout)
        if r.exit == ABSENT_EXIT:
            return None
        if r.exit != 0:
            raise RemoteError(f"cannot read {path}: exit {r.exit}: {r.stderr.strip()[-300:]}")
        return r.stdout

    def write(self, path: str, content: str, mode: int = 0o644) -> None:
        try:
            self.conn.write_file(path, content, mode, timeout=self.timeout)
        except CommandFailed as e:
            raise RemoteError(f"cannot write {path}: exit {e.result.exit}: {e.result.stderr.strip()[-300:]}") from None


class RemoteError(RuntimeError):
    """A read or write on a host failed (not a missing file: that reads as None)."""


# -- what a host is -----------------------------------------------------------------------------

@dataclass
class Target:
    """One host for one step: its params entry, its facts (from ``hosts.facts``), the site params,
    and the remote to probe it with. The OS family comes from the facts, never from the params."""

    host: Host
    facts: dict
    params: Params
    remote: Remote
    state: dict = field(default_factory=dict)  # per-host notes shared between steps (reboot needed...)

    @property
    def name(self) -> str:
        return self.host.name

    @property
    def family(self) -> str:
        return self.facts.get("os_family") or ""

    @property
    def os_id(self) -> str:
        return (self.facts.get("os_id") or "").lower()

    @property
    def os_version(self) -> str:
        return str(self.facts.get("os_version") or "")

    @property
    def major(self) -> int:
        m = re.match(r"(\d+)", self.os_version)
        return int(m.group(1)) if m else 0

    @property
    def rhel(self) -> bool:
        return self.family == "rhel"

    @property
    def debian(self) -> bool:
        return self.family == "debian"

    @property
    def el7(self) -> bool:
        return self.rhel and self.major == 7

    @property
    def pkg(self) -> str:
        """The package manager: dnf (EL8+), yum (EL7) or apt."""
        if self.debian:
            return "apt"
        return "yum" if self.el7 else "dnf"

    @property
    def kernel(self) -> str:
        return self.facts.get("kernel") or ""

    @property
    def has_systemd(self) -> bool:
        return bool(self.facts.get("has_systemd"))

    @property
    def gpus(self) -> int:
        """NVIDIA GPUs the host has (nvidia-smi's count, else PCI's), from the facts."""
        return int(self.facts.get("gpu_count") or 0)

    @property
    def codename(self) -> str:
        return self.facts.get("os_codename") or ""

    def no_systemd_reason(self) -> str:
        return f"no systemd as PID 1 (PID 1 is {self.facts.get('pid1') or '?'}): services cannot be enabled or started here"


# -- what a step would do -----------------------------------------------------------------------

@dataclass
class WriteFile:
    """Write a whole file (created with its folder when absent)."""

    path: str
    content: str
    old: Optional[str] = None  # current content; None: absent
    mode: int = 0o644
    backup: bool = False  # keep the first original under BACKUP_DIR (same path below it)

    def describe(self) -> str:
        return f"{'create' if self.old is None else 'update'} {self.path}"

    def diff(self) -> str:
        a = [] if self.old is None else self.old.splitlines(keepends=True)
        b = self.content.splitlines(keepends=True)
        lines = list(difflib.unified_diff(a, b, fromfile=self.path if self.old is not None else "/dev/null",
                                          tofile=self.path, lineterm="\n"))
        return "".join(ln if ln.endswith("\n") else ln + "\n" for ln in lines)


@dataclass
class Run:
    """Run a command as root; a non-zero exit fails the step (unless `check` is False)."""

    command: str
    why: str = ""
    timeout: Optional[float] = None
    check: bool = True

    def describe(self) -> str:
        return self.why or _short(self.command)


@dataclass
class Call:
    """Run a Python function against the remote (for what a command alone cannot do: reconnect and
    confirm after a network change, wait for a reboot). Returns a message or raises."""

    fn: Callable[["Target"], str]
    why: str
    shown: str = ""  # what the plan shows for it

    def describe(self) -> str:
        return self.why


Action = Union[WriteFile, Run, Call]


@dataclass
class Outcome:
    """A planner's answer: skip (why), fail (why), or the actions that would converge the host
    (none: already converged). `message` says what was found; `warnings` are kept in both modes."""

    actions: list[Action] = field(default_factory=list)
    message: str = ""
    warnings: list[str] = field(default_factory=list)
    skip: Optional[str] = None
    fail: Optional[str] = None
    verify: bool = True  # run the planner again after apply and require no actions
    data: dict = field(default_factory=dict)

    def files(self) -> dict[str, str]:
        return {a.path: a.content for a in self.actions if isinstance(a, WriteFile)}

    def commands(self) -> list[str]:
        return [a.command for a in self.actions if isinstance(a, Run)]


def skip(why: str, **data) -> Outcome:
    return Outcome(skip=why, data=data)


def fail(why: str, **data) -> Outcome:
    return Outcome(fail=why, data=data)


def converged(message: str, warnings: list[str] | None = None, **data) -> Outcome:
    return Outcome(message=message, warnings=list(warnings or []), data=data)


def render_plan(o: Outcome) -> str:
    """The diff column: unified diffs of the files, then each command as ``$ command``."""
    parts = []
    for a in o.actions:
        if isinstance(a, WriteFile):
            parts.append(a.diff() or f"(unchanged content, mode {a.mode:o}) {a.path}\n")
        elif isinstance(a, Run):
            parts.append(f"$ {a.command}\n")
        else:
            parts.append(f"# {a.shown or a.why}\n")
    return "".join(parts)


def _short(command: str, limit: int = 140) -> str:
    one = " ".join(command.split())
    return one if len(one) <= limit else one[: limit - 3] + "..."


def _summary(actions: list[Action]) -> str:
    return "; ".join(a.describe() for a in actions)


def _with_warnings(msg: str, warnings: list[str]) -> str:
    if not warnings:
        return msg
    return msg + (" " if msg else "") + " ".join(f"WARNING: {w}" for w in warnings)


Planner = Callable[[Target], Outcome]


def _backup(t: Target, path: str) -> None:
    q = shlex.quote(path)
    b = shlex.quote(BACKUP_DIR + path)
    t.remote.run(f"if [ -e {q} ] && [ ! -e {b} ]; then mkdir -p $(dirname {b}) && cp -p {q} {b}; fi")


def execute(step: str, t: Target, planner: Planner, apply: bool) -> StepResult:
    """Plan (and in apply mode act and verify) one step on one host; never raises for the host's
    own failures: they become the failed StepResult."""
    t0 = time.monotonic()

    def done(r: StepResult) -> StepResult:
        r.duration = time.monotonic() - t0
        return r

    o = planner(t)
    data = dict(o.data)
    if o.skip:
        return done(skipped(t.name, step, o.skip))
    if o.fail:
        return done(failed(t.name, step, _with_warnings(o.fail, o.warnings), data=data))
    plan_text = render_plan(o)
    data.update(files=o.files(), commands=o.commands())
    if not o.actions:
        return done(StepResult(host=t.name, step=step, message=_with_warnings(o.message or "already as wanted",
                                                                                 o.warnings), data=data))
    if not apply:
        msg = f"would {_summary(o.actions)}"
        return done(StepResult(host=t.name, step=step, changed=True, message=_with_warnings(msg, o.warnings),
                               diff=plan_text, data=data))
    did: list[str] = []
    for a in o.actions:
        try:
            if isinstance(a, WriteFile):
                if a.backup:
                    _backup(t, a.path)
                t.remote.write(a.path, a.content, a.mode)
            elif isinstance(a, Run):
                r = t.remote.run(a.command, timeout=a.timeout)
                if a.check and not r.ok:
                    # exit -1: no exit status came back; the session (or the host) went away mid-command.
                    how = "lost the connection" if r.exit == -1 else f"failed: exit {r.exit}"
                    return done(failed(t.name, step, f"{a.describe()} {how}: {r.tail()}"
                                       + (f" (done before: {'; '.join(did)})" if did else ""),
                                       changed=bool(did), diff=plan_text, data=data))
            else:
                note = a.fn(t)
                if note:
                    did.append(note)
                    continue
        except RemoteError as e:
            return done(failed(t.name, step, str(e), changed=bool(did), diff=plan_text, data=data))
        did.append(a.describe())
    msg = f"did {'; '.join(did)}"
    if o.verify:
        again = planner(t)
        if again.fail:
            return done(failed(t.name, step, f"{msg}; verification failed: {again.fail}", changed=True,
                               diff=plan_text, data=data))
        if again.actions:
            return done(failed(t.name, step, f"{msg}; not converged: a second look would still "
                                             f"{_summary(again.actions)}", changed=True, diff=plan_text, data=data))
        if again.message:
            msg += f"; verified: {again.message}"
        o.warnings = list(dict.fromkeys(o.warnings + again.warnings))
    return done(StepResult(host=t.name, step=step, changed=True, message=_with_warnings(msg, o.warnings),
                           diff=plan_text, data=data))


# -- small shared probes and parsers --------------------------------------------------------------

def parse_kv_lines(text: str, sep: str = "=") -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if sep in line:
            k, v = line.split(sep, 1)
            out[k.strip()] = v.strip()
    return out


def have(t: Target, tool: str) -> bool:
    """Whether `tool` is on the host's PATH (as root: /usr/sbin included)."""
    return t.remote.run(f"command -v {shlex.quote(tool)} >/dev/null 2>&1").ok


def file_action(t: Target, path: str, content: str, mode: int = 0o644, backup: bool = False) -> list[Action]:
    """[WriteFile] when `path` differs from `content`, else []."""
    old = t.remote.read(path)
    if old == content:
        return []
    return [WriteFile(path, content, old, mode, backup)]


def systemd_enable(t: Target, unit: str, restart: bool = False) -> list[Action]:
    """Actions that make `unit` enabled and running (restarted when `restart`: its config changed)."""
    enabled = t.remote.run(f"systemctl is-enabled {unit}").stdout.strip() == "enabled"
    active = t.remote.run(f"systemctl is-active {unit}").stdout.strip() == "active"
    if not enabled or not active:
        return [Run(f"systemctl enable --now {unit}" + (f" && systemctl restart {unit}" if restart and active else ""),
                    f"enable and start {unit}")]
    if restart:
        return [Run(f"systemctl restart {unit}", f"restart {unit}")]
    return []
