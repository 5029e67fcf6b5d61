"""Running planners on every host of a phase: facts first, then each step in parallel.

A host that stops answering (refused, timed out) is marked dead at the step where it happened;
later steps report it as failed without waiting on it again, so one dead host costs one connect
timeout, not one per step, and the verdict names it.
"""

from __future__ import annotations

import re
from typing import Callable

from ..hosts import HostPool
from ..hosts.facts import facts_table, gather_facts
from ..report import StepResult, Table, failed
from .base import Outcome, SSHRemote, Target, execute

_DEAD = re.compile(r"unreachable|refused the connection|did not answer|SSH handshake failed|"
                   r"Socket is closed|SSH session not active|Connection reset|EOFError|lost the connection", re.I)


def _phase_state(ctx) -> dict:
    ex = ctx.extra
    ex.setdefault("facts", {})
    ex.setdefault("dead", {})
    ex.setdefault("state", {})
    return ex


def facts_step(ctx, step: str = "facts | gather") -> Table:
    """Facts of every host (OS family, kernel, systemd, GPUs...), the input of every later step."""
    ex = _phase_state(ctx)
    pool: HostPool = ex["pool"]
    results = gather_facts(pool, step=step)
    ex["facts"] = {r.host: r.data for r in results if r.ok}
    for r in results:
        if not r.ok and _DEAD.search(r.message):
            ex["dead"][r.host] = step
        elif r.ok:
            ex["dead"].pop(r.host, None)
    ctx.phase.record("facts", results)
    return facts_table(results, "Host facts (the family, kernel, systemd and GPUs each step acts on)")


def run_step(ctx, key: str, step: str, planner: Callable[[Target], Outcome], title: str) -> Table:
    """Run one planner on every host with facts, in parallel; plan or apply by the phase's mode."""
    ex = _phase_state(ctx)
    pool: HostPool = ex["pool"]
    apply = ctx.apply
    out: list[StepResult] = []
    live = []
    for h in ctx.params.hosts:
        if h.name in ex["dead"]:
            out.append(failed(h.name, step, f"not run: {h.name} unreachable since '{ex['dead'][h.name]}'"))
        elif h.name not in ex["facts"]:
            out.append(failed(h.name, step, f"not run: no facts for {h.name} (see the facts step)"))
        else:
            live.append(h.name)

    def one(conn, host):
        t = Target(host, ex["facts"][host.name], ctx.params, SSHRemote(conn),
                   state=ex["state"].setdefault(host.name, {}))
        return execute(step, t, planner, apply)

    if live:
        got = pool.run(one, step, hosts=live)
        for r in got:
            if not r.ok and _DEAD.search(r.message) and not _alive(pool, r.host):
                ex["dead"][r.host] = step
                r.message = f"{r.host} stopped answering: {r.message}"
        out.extend(got)
    order = {h.name: i for i, h in enumerate(ctx.params.hosts)}
    out.sort(key=lambda r: order.get(r.host, 0))
    return ctx.phase.record(key, out, title)


def _alive(pool: HostPool, name: str) -> bool:
    """One fresh connection attempt (bounded by the connect timeout)."""
    conn = pool.connection(name)
    try:
        conn.close()
        conn.open()
        return True
    except Exception:
        return False


def make_step(context, fn_name: str, label: str, planner):
    """A phase's step function (what a notebook cell calls): runs `planner` on every host through
    :func:`run_step` with the phase context `context()` returns."""

    def step():
        return run_step(context(), fn_name, label, planner, label)

    step.__name__ = fn_name
    step.__doc__ = (planner.__doc__ or label).strip().splitlines()[0]
    return step
