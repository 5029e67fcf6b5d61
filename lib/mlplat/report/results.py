"""Step results as data, shown as tables, summed into a phase verdict.

A step returns one :class:`StepResult` per host (or per object, for cluster steps). A notebook
records them on its :class:`Phase`, which shows them as a table and, in the last cell, writes the
verdict JSON. Re-running a cell replaces that step's records, so nothing is counted twice.
"""

from __future__ import annotations

import html
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import pandas as pd

from .hints import hint_for


@dataclass
class StepResult:
    """What one step did on one host (Ansible's ok/changed/skipped/msg/diff, as a record)."""

    host: str
    step: str
    ok: bool = True
    changed: bool = False
    skipped: bool = False
    message: str = ""
    diff: str = ""
    duration: float = 0.0
    data: dict = field(default_factory=dict)

    @property
    def status(self) -> str:
        if not self.ok:
            return "failed"
        if self.skipped:
            return "skipped"
        return "changed" if self.changed else "ok"

    @property
    def hint(self) -> str:
        return "" if self.ok else hint_for(self.message)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["status"] = self.status
        if not self.ok:
            d["hint"] = self.hint
        return d


def skipped(host: str, step: str, why: str) -> StepResult:
    """A step that cannot run here; `why` says what is missing (a GPU, systemd...)."""
    return StepResult(host=host, step=step, ok=True, skipped=True, message=f"skipped: {why}")


def failed(host: str, step: str, message: str, **kw) -> StepResult:
    return StepResult(host=host, step=step, ok=False, message=message, **kw)


_COLOURS = {"ok": "#d4edda", "changed": "#fff3cd", "failed": "#f8d7da", "skipped": "#e2e3e5"}
_MARKS = {"ok": "ok", "changed": "changed", "failed": "FAILED", "skipped": "skipped"}


class Table:
    """A table shown in a notebook: coloured HTML in JupyterLab and HTML exports, text elsewhere."""

    def __init__(self, frame: pd.DataFrame, title: str = "", status_col: str | None = "status"):
        self.frame = frame
        self.title = title
        self.status_col = status_col if status_col in frame.columns else None

    def _repr_html_(self) -> str:
        head = f"<h4>{html.escape(self.title)}</h4>" if self.title else ""
        if self.frame.empty:
            return head + "<p><em>(no rows)</em></p>"
        # A stable id (pandas picks a random one) keeps re-rendered notebooks diffable.
        import hashlib

        uid = hashlib.sha1(self.title.encode()).hexdigest()[:8]
        # Two decimals: durations and sizes, not pandas' six-digit default.
        styler = self.frame.style.hide(axis="index").set_uuid(uid).format(precision=2)
        if self.status_col:
            col = self.status_col
            styler = styler.apply(
                lambda row: [f"background-color: {_COLOURS.get(row[col], '')}" if c == col else ""
                             for c in row.index], axis=1)
        styler = styler.set_table_attributes('class="mlplat-table"')
        return head + styler.to_html()

    def __repr__(self) -> str:
        head = f"{self.title}\n" if self.title else ""
        if self.frame.empty:
            return head + "(no rows)"
        return head + self.frame.to_string(index=False, max_colwidth=100)

    def __len__(self) -> int:
        return len(self.frame)


def results_table(results: Iterable[StepResult], title: str = "", columns: list[str] | None = None) -> Table:
    """The standard step table: host / step / status / changed / message (+ hint on failures)."""
    rows = []
    for r in results:
        row = {"host": r.host, "step": r.step, "status": r.status, "changed": r.changed,
               "message": r.message, "duration_s": round(r.duration, 2)}
        if not r.ok:
            row["hint"] = r.hint
        rows.append(row)
    frame = pd.DataFrame(rows, columns=columns or None)
    if "hint" in frame.columns:
        frame["hint"] = frame["hint"].fillna("")
    return Table(frame, title)


class PhaseFailed(RuntimeError):
    """Raised by the verdict cell when a phase is not ok, so papermill marks the cell."""


@dataclass
class Phase:
    """The state of one phase run: its parameters and the results of each step, keyed by step."""

    number: str
    name: str
    mode: str = "plan"
    steps: dict[str, list[StepResult]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)

    def record(self, step: str, results: list[StepResult], title: str | None = None) -> Table:
        """Store a step's results (replacing an earlier run of the same step) and return its table."""
        self.steps[step] = list(results)
        return results_table(results, title or step)

    def note(self, text: str) -> None:
        """A statement for the verdict, e.g. what the lab cannot prove. Recorded once."""
        if text not in self.notes:
            self.notes.append(text)

    def all_results(self) -> list[StepResult]:
        return [r for rs in self.steps.values() for r in rs]

    def verdict(self) -> dict:
        """Sum the recorded steps into a verdict: ok, failures (with hints), counts, per-host summary."""
        results = self.all_results()
        counts = {k: 0 for k in ("ok", "changed", "failed", "skipped")}
        hosts: dict[str, dict] = {}
        for r in results:
            counts[r.status] += 1
            h = hosts.setdefault(r.host, {k: 0 for k in counts})
            h[r.status] += 1
        failures = [{"host": r.host, "step": r.step, "message": r.message, "hint": r.hint}
                    for r in results if not r.ok]
        return {
            "phase": self.number, "name": self.name, "mode": self.mode,
            "ok": not failures, "failures": failures, "counts": counts,
            "changed": counts["changed"], "hosts": hosts, "notes": list(self.notes),
            "steps": list(self.steps), "duration_s": round(time.time() - self.started, 2),
        }

    def finish(self, run_dir: str | os.PathLike | None = None) -> None:
        """Write `verdict-<phase>.json` (into `run_dir`, or $MLPLAT_RUN_DIR, or nowhere), show the
        verdict table, and raise :class:`PhaseFailed` when the phase is not ok. Returns nothing, so
        the notebook shows the table once."""
        v = self.verdict()
        target = run_dir or os.environ.get("MLPLAT_RUN_DIR")
        if target:
            p = Path(target) / f"verdict-{self.number}_{self.name}.json"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps(v, indent=2, sort_keys=True) + "\n")
        rows = [{"host": h, **c} for h, c in sorted(v["hosts"].items())]
        table = Table(pd.DataFrame(rows), f"Verdict {self.number} {self.name}: {'ok' if v['ok'] else 'FAILED'}",
                      status_col=None)
        from IPython.display import display

        display(table)
        for n in v["notes"]:
            print(f"note: {n}")
        if not v["ok"]:
            lines = [f"{f['host']}: {f['step']}: {f['message']}" + (f"\n    hint: {f['hint']}" if f["hint"] else "")
                     for f in v["failures"]]
            raise PhaseFailed(f"phase {self.number} {self.name} failed ({len(lines)} failure(s)):\n" + "\n".join(lines))
        print(f"verdict: ok ({v['counts']['changed']} changed, {v['counts']['skipped']} skipped)")
