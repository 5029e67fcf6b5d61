"""Headless runs: the phase notebooks executed in order with papermill, archived under
`outputs/<run-id>/` (executed notebook, HTML, verdict JSON, run.json, run.log), scrubbed of
secrets and local paths. A failing phase stops the run; `--resume RUN_ID` continues from it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets as _rand
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..params import load_params, secret_values
from ..report import hint_for, scrub

NOTEBOOK_RX = re.compile(r"^(\d\d)_([a-z0-9_]+)\.ipynb$")
# Teardown runs only when named: a main run that ended by tearing down would be a surprise.
EXPLICIT_ONLY = {"99"}


def _ipc_kernel_manager():
    """A kernel manager that talks to the kernel over IPC sockets in a private runtime folder
    instead of loopback TCP: no port another local user could reach, and no ipykernel warning
    about unencrypted TCP in every run's output."""
    from jupyter_client.manager import AsyncKernelManager

    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.transport = "ipc"

    return IPCKernelManager


class RunError(Exception):
    """A run could not start (bad selection, unknown run id...); nothing was executed."""


@dataclass(frozen=True)
class PhaseNotebook:
    number: str
    name: str
    path: Path

    @property
    def stem(self) -> str:
        return f"{self.number}_{self.name}"


def repo_root() -> Path:
    from ..phases.common import repo_root as _r

    return _r()


def notebooks_dir() -> Path:
    return Path(os.environ.get("MLPLAT_NOTEBOOKS") or repo_root() / "notebooks")


def outputs_dir() -> Path:
    return Path(os.environ.get("MLPLAT_OUTPUTS") or repo_root() / "outputs")


def discover(nb_dir: Path | None = None) -> list[PhaseNotebook]:
    """Every phase notebook, in phase order."""
    d = nb_dir or notebooks_dir()
    out = []
    for p in sorted(d.glob("*.ipynb")):
        m = NOTEBOOK_RX.match(p.name)
        if m:
            out.append(PhaseNotebook(m.group(1), m.group(2), p))
    return out


def select(all_phases: list[PhaseNotebook], only: str | None = None, start: str | None = None,
           phases: str | None = None) -> list[PhaseNotebook]:
    """Pick phases by --only N, --from N or --phases A,B (numbers or names); default: all but 99."""
    if sum(x is not None for x in (only, start, phases)) > 1:
        raise RunError("use only one of --only, --from and --phases")

    def find(key: str) -> PhaseNotebook:
        key = key.strip()
        for p in all_phases:
            if key in (p.number, p.name, p.stem):
                return p
        raise RunError(f"no phase {key!r}; known: {', '.join(p.stem for p in all_phases)}")

    if only is not None:
        return [find(only)]
    if phases is not None:
        chosen = {find(k).number for k in phases.split(",") if k.strip()}
        return [p for p in all_phases if p.number in chosen]
    if start is not None:
        first = find(start).number
        return [p for p in all_phases if p.number >= first and p.number not in EXPLICIT_ONLY]
    return [p for p in all_phases if p.number not in EXPLICIT_ONLY]


def new_run_id(mode: str) -> str:
    return f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{mode}-{_rand.token_hex(2)}"


def _scrub_paths(run_dir: Path, params_file: Path) -> list[str]:
    """Local paths replaced by short placeholders in the archive (papermill records absolute paths)."""
    paths = [str(repo_root()), str(Path.home()), str(outputs_dir().resolve()), str(run_dir.resolve()),
             str(params_file.parent), str(notebooks_dir().resolve())]
    return [p for p in paths if p and p != "/"]


class _ScrubFormatter(logging.Formatter):
    def __init__(self, secrets_: list[str], paths: list[str]):
        super().__init__("%(asctime)s %(levelname)s %(message)s")
        self.secrets, self.paths = secrets_, paths

    def format(self, record):
        return scrub(super().format(record), self.secrets, self.paths)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


def _scrub_file(path: Path, secrets_: list[str], paths: list[str]) -> None:
    if path.exists():
        text = path.read_text()
        clean = scrub(text, secrets_, paths)
        if clean != text:
            path.write_text(clean)


def _html(nb_path: Path, html_path: Path) -> None:
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(nb_path, as_version=4)
    body, _ = HTMLExporter().from_notebook_node(nb)
    html_path.write_text(body)


def _write_index(say) -> None:
    """outputs/index.html, the run history page; a run never fails for want of it."""
    from .history_page import write_index

    try:
        write_index(outputs_dir())
    except OSError as e:
        say(f"warning: run history page not written: {e}")


def _fmt_s(s: float) -> str:
    return f"{s:.1f}s" if s < 120 else f"{int(s // 60)}m{int(s % 60):02d}s"


class Runner:
    """Executes a selection of phase notebooks and archives the run."""

    def __init__(self, params_file: str | Path, mode: str = "plan", out=None, progress: bool = True):
        self.params_file = Path(params_file).resolve()
        self.mode = mode
        self.out = out or sys.stdout
        self.progress = progress

    def say(self, msg: str) -> None:
        print(msg, file=self.out, flush=True)

    def run(self, selected: list[PhaseNotebook], run_dir: Path | None = None, record: dict | None = None) -> dict:
        """Run the phases in order; stop at the first failure. Returns run.json's content."""
        import papermill as pm

        params = load_params(self.params_file)  # ParamsError before anything runs
        secret_list = secret_values(params)
        run_id = record["run_id"] if record else new_run_id(self.mode)
        run_dir = run_dir or outputs_dir() / run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        paths = _scrub_paths(run_dir, self.params_file)
        rec = record or {
            "run_id": run_id, "params_file": scrub(str(self.params_file), [], paths), "mode": self.mode,
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "status": "running",
            "phases": [{"number": p.number, "name": p.name, "status": "pending"} for p in selected],
        }
        rec["status"] = "running"
        rec.setdefault("resumed", [])
        # The archive holds no local paths; resume finds the params file through this local note,
        # kept beside the run folders rather than in them.
        state = outputs_dir() / ".state"
        state.mkdir(parents=True, exist_ok=True)
        _write_json(state / f"{run_id}.json", {"params_file": str(self.params_file)})
        log = logging.getLogger("papermill")
        handler = logging.FileHandler(run_dir / "run.log")
        handler.setFormatter(_ScrubFormatter(secret_list, paths))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
        t_run = time.monotonic()
        env_before = os.environ.get("MLPLAT_RUN_DIR")
        os.environ["MLPLAT_RUN_DIR"] = str(run_dir)  # kernels inherit it
        try:
            by_num = {p["number"]: p for p in rec["phases"]}
            for i, nb in enumerate(selected, 1):
                entry = by_num.setdefault(nb.number, {"number": nb.number, "name": nb.name})
                if entry.get("status") == "ok":
                    continue
                _write_json(run_dir / "run.json", rec)
                self.say(f"[{i}/{len(selected)}] {nb.stem}: running ({self.mode})")
                log.info("phase %s started", nb.stem)
                out_nb = run_dir / f"{nb.stem}.ipynb"
                declared = pm.inspect_notebook(str(nb.path)).keys()
                values = {"params_file": str(self.params_file), "mode": self.mode, "run_dir": str(run_dir)}
                t0 = time.monotonic()
                error = None
                try:
                    pm.execute_notebook(str(nb.path), str(out_nb),
                                        parameters={k: v for k, v in values.items() if k in declared},
                                        cwd=str(nb.path.parent), progress_bar=self.progress, log_output=True,
                                        kernel_name="python3", request_save_on_cell_execute=True,
                                        kernel_manager_class=_ipc_kernel_manager())
                except pm.PapermillExecutionError as e:
                    error = e
                dur = time.monotonic() - t0
                for f in (out_nb, run_dir / f"verdict-{nb.stem}.json"):
                    _scrub_file(f, secret_list, paths)
                if out_nb.exists():
                    _html(out_nb, run_dir / f"{nb.stem}.html")
                verdict = {}
                vpath = run_dir / f"verdict-{nb.stem}.json"
                if vpath.exists():
                    verdict = json.loads(vpath.read_text())
                entry.update({"status": "failed" if error else "ok", "duration_s": round(dur, 1),
                              "changed": verdict.get("changed", 0), "notebook": out_nb.name,
                              "html": f"{nb.stem}.html", "verdict": vpath.name if vpath.exists() else None})
                if error is None:
                    self.say(f"[{i}/{len(selected)}] {nb.stem}: ok in {_fmt_s(dur)} "
                             f"({entry['changed']} changed)")
                    log.info("phase %s ok in %.1fs", nb.stem, dur)
                    continue
                first_line = (error.source or "").strip().splitlines()[:1]
                evalue = scrub(str(error.evalue), secret_list, paths)
                hints = [f["hint"] for f in verdict.get("failures", []) if f.get("hint")]
                hint = hints[0] if hints else hint_for(evalue)
                entry["failing_cell"] = {"index": error.cell_index, "execution_count": error.exec_count,
                                         "source": first_line[0] if first_line else "",
                                         "error": f"{error.ename}: {evalue}"}
                entry["hint"] = hint
                self.say(f"[{i}/{len(selected)}] {nb.stem}: FAILED in {_fmt_s(dur)} at cell {error.cell_index} "
                         f"({entry['failing_cell']['source']})\n    {error.ename}: {evalue}"
                         + (f"\n    hint: {hint}" if hint and hint not in evalue else "")
                         + f"\n    notebook: {run_dir / out_nb.name}")
                log.error("phase %s failed: %s: %s", nb.stem, error.ename, evalue)
                break
            failed_ = [p for p in rec["phases"] if p.get("status") == "failed"]
            rec["status"] = "failed" if failed_ else "ok"
        except KeyboardInterrupt:
            rec["status"] = "interrupted"
            raise
        finally:
            rec["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            rec["duration_s"] = round(rec.get("duration_s", 0) + time.monotonic() - t_run, 1)
            _write_json(run_dir / "run.json", rec)
            _scrub_file(run_dir / "run.json", secret_list, paths)
            _write_index(self.say)
            log.removeHandler(handler)
            handler.close()
            if env_before is None:
                os.environ.pop("MLPLAT_RUN_DIR", None)
            else:
                os.environ["MLPLAT_RUN_DIR"] = env_before
        self.say(f"run {rec['run_id']}: {rec['status']} in {_fmt_s(rec['duration_s'])} -> {run_dir}")
        return rec


def run(params_file: str | Path, mode: str = "plan", only=None, start=None, phases=None,
        progress: bool = True, out=None) -> dict:
    """Run a fresh selection of phases (see :func:`select`)."""
    selected = select(discover(), only, start, phases)
    if not selected:
        raise RunError("no phases selected")
    return Runner(params_file, mode, out=out, progress=progress).run(selected)


def resume(run_id: str, progress: bool = True, out=None) -> dict:
    """Continue a failed run from its failed phase, in the same folder, with the same params and mode."""
    run_dir = outputs_dir() / run_id
    rj = run_dir / "run.json"
    if not rj.exists():
        raise RunError(f"no run {run_id!r} under {outputs_dir()} (see `mlplat runs`)")
    rec = json.loads(rj.read_text())
    if rec.get("status") == "ok":
        raise RunError(f"run {run_id} finished ok; nothing to resume")
    note = outputs_dir() / ".state" / f"{run_id}.json"
    if not note.exists():
        raise RunError(f"run {run_id} was made on another machine or its local state is gone; "
                       "start a new run with --params")
    params_file = json.loads(note.read_text())["params_file"]
    all_nb = {p.number: p for p in discover()}
    selected = [all_nb[p["number"]] for p in rec["phases"] if p["number"] in all_nb]
    rec["resumed"] = rec.get("resumed", []) + [datetime.now(timezone.utc).isoformat(timespec="seconds")]
    for p in rec["phases"]:
        if p.get("status") != "ok":
            p["status"] = "pending"
            p.pop("failing_cell", None)
            p.pop("hint", None)
    return Runner(params_file, rec["mode"], out=out, progress=progress).run(selected, run_dir, rec)


def history() -> list[dict]:
    """Every archived run's run.json, newest first."""
    out = []
    base = outputs_dir()
    if not base.exists():
        return out
    for rj in base.glob("*/run.json"):
        try:
            out.append(json.loads(rj.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return sorted(out, key=lambda r: r.get("started", ""), reverse=True)


def history_table():
    """Past runs as a table: id, start, mode, status, phases ok/total, duration, failed phase."""
    import pandas as pd

    rows = []
    for r in history():
        ph = r.get("phases", [])
        bad = next((f"{p['number']}_{p['name']}" for p in ph if p.get("status") == "failed"), "")
        rows.append({"run": r.get("run_id"), "started": r.get("started"), "mode": r.get("mode"),
                     "status": r.get("status"), "phases ok": f"{sum(p.get('status') == 'ok' for p in ph)}/{len(ph)}",
                     "duration": _fmt_s(r.get("duration_s", 0)), "failed phase": bad})
    return pd.DataFrame(rows, columns=["run", "started", "mode", "status", "phases ok", "duration", "failed phase"])
