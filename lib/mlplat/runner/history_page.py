"""The run history page: `outputs/index.html`, one static page listing every archived run.

Written after every `mlplat run` (and by `mlplat runs --html`) from the runs' run.json files:
runs newest first with their params file, mode, start, duration and status, one coloured badge per
phase linking to its rendered notebook, the verdict JSON beside it, and the failing cell and hint
of a failed phase. Links are relative and the page has no script, so it works opened from disk
(file://), copied elsewhere with the outputs folder, or served by any static web server.
"""

from __future__ import annotations

import html
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

INDEX = "index.html"
# The step tables' colours (report.results), so a status reads the same on every page.
COLOURS = {"ok": "#d4edda", "changed": "#fff3cd", "failed": "#f8d7da", "skipped": "#e2e3e5",
           "running": "#cfe2ff", "interrupted": "#f8d7da", "pending": "#f1f3f5"}
BORDERS = {"ok": "#28a745", "failed": "#dc3545", "interrupted": "#dc3545", "running": "#0d6efd"}

_CSS = """
body { font-family: -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif;
       margin: 24px; color: #212529; font-size: 14px; }
h1 { font-size: 20px; margin: 0 0 4px 0; }
p.sub { color: #6c757d; margin: 0 0 16px 0; }
table.runs { border-collapse: collapse; width: 100%; }
table.runs th { text-align: left; background: #f8f9fa; border-bottom: 2px solid #dee2e6; padding: 6px 8px; }
table.runs td { border-bottom: 1px solid #dee2e6; padding: 6px 8px; vertical-align: top; }
td.run code { font-size: 12px; white-space: nowrap; }
td.started, td.duration, td.mode { white-space: nowrap; }
span.status { display: inline-block; padding: 2px 8px; border-radius: 4px; font-weight: 600; }
ul.phases { list-style: none; margin: 0; padding: 0; }
ul.phases li { margin: 0 0 3px 0; }
a.phase, span.phase { display: inline-block; min-width: 190px; padding: 2px 8px; border-radius: 4px;
                      border-left: 4px solid transparent; text-decoration: none; color: #212529; }
a.phase:hover { text-decoration: underline; }
a.small, span.small { font-size: 12px; color: #495057; margin-left: 6px; }
div.fail { font-size: 12px; margin: 2px 0 4px 12px; color: #842029; white-space: pre-wrap; }
p.empty { color: #6c757d; }
"""


def _e(x) -> str:
    return html.escape("" if x is None else str(x))


def _href(run_id: str, name: str) -> str:
    return f"{quote(run_id)}/{quote(name)}"


def fmt_duration(s) -> str:
    try:
        s = float(s)
    except (TypeError, ValueError):
        return "-"
    return f"{s:.1f}s" if s < 120 else f"{int(s // 60)}m{int(s % 60):02d}s"


def fmt_started(iso: str | None) -> str:
    if not iso:
        return "-"
    try:
        return datetime.fromisoformat(iso).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return iso


def _status(status: str | None) -> str:
    s = status or "unknown"
    return (f'<span class="status status-{_e(s)}" style="background:{COLOURS.get(s, "#f1f3f5")}">'
            f"{_e(s)}</span>")


def _phase_item(run_dir: Path, run_id: str, p: dict) -> str:
    stem = f"{p.get('number', '??')}_{p.get('name', '?')}"
    st = p.get("status") or "pending"
    style = f"background:{COLOURS.get(st, '#f1f3f5')};border-left-color:{BORDERS.get(st, '#adb5bd')}"
    label = f"{_e(stem)} &middot; {_e(st)}"
    if p.get("duration_s") is not None:
        label += f" &middot; {_e(fmt_duration(p['duration_s']))}"
    if st == "ok" and p.get("changed"):
        label += f" &middot; {_e(p['changed'])} changed"
    page = p.get("html")
    if page and (run_dir / page).exists():
        item = (f'<a class="phase phase-{_e(st)}" data-phase="{_e(stem)}" data-status="{_e(st)}" '
                f'style="{style}" href="{_href(run_id, page)}">{label}</a>')
    else:
        item = f'<span class="phase phase-{_e(st)}" data-phase="{_e(stem)}" data-status="{_e(st)}" style="{style}">{label}</span>'
    verdict = p.get("verdict")
    if verdict and (run_dir / verdict).exists():
        item += f'<a class="small verdict" href="{_href(run_id, verdict)}">verdict</a>'
    nb = p.get("notebook")
    if nb and (run_dir / nb).exists():
        item += f'<a class="small notebook" href="{_href(run_id, nb)}">ipynb</a>'
    fc = p.get("failing_cell")
    if fc:
        text = f"cell {fc.get('index')}: {fc.get('source', '')}\n{fc.get('error', '')}"
        if p.get("hint") and p["hint"] not in text:
            text += f"\nhint: {p['hint']}"
        item += f'<div class="fail">{_e(text)}</div>'
    return f"<li>{item}</li>"


def _run_row(base: Path, rec: dict) -> str:
    run_id = str(rec.get("run_id", "?"))
    run_dir = base / run_id
    phases = "".join(_phase_item(run_dir, run_id, p) for p in rec.get("phases", []))
    extras = []
    for name, label in (("run.json", "run.json"), ("run.log", "log")):
        if (run_dir / name).exists():
            extras.append(f'<a class="small" href="{_href(run_id, name)}">{label}</a>')
    resumed = rec.get("resumed") or []
    note = f'<br><span class="small">resumed {len(resumed)}x</span>' if resumed else ""
    return (f'<tr class="run" id="run-{_e(run_id)}" data-run="{_e(run_id)}" data-status="{_e(rec.get("status"))}">'
            f'<td class="run"><code>{_e(run_id)}</code><br>{"".join(extras)}</td>'
            f'<td class="started">{_e(fmt_started(rec.get("started")))}</td>'
            f'<td class="duration">{_e(fmt_duration(rec.get("duration_s")))}</td>'
            f'<td class="params"><code>{_e(rec.get("params_file"))}</code></td>'
            f'<td class="mode">{_e(rec.get("mode"))}</td>'
            f'<td class="status">{_status(rec.get("status"))}{note}</td>'
            f'<td class="phases"><ul class="phases">{phases}</ul></td></tr>')


def render(runs: list[dict], base: Path) -> str:
    """The page for `runs` (newest first) archived under `base`."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    if runs:
        body = ('<table class="runs"><thead><tr><th>run</th><th>started</th><th>duration</th>'
                "<th>params file</th><th>mode</th><th>status</th><th>phases</th></tr></thead><tbody>"
                + "".join(_run_row(base, r) for r in runs) + "</tbody></table>")
    else:
        body = '<p class="empty">No runs yet: <code>mlplat run --params FILE</code> makes one.</p>'
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>mlplat runs</title><style>{_CSS}</style></head><body>"
            f"<h1>mlplat runs</h1>"
            f'<p class="sub">{len(runs)} run(s), newest first; written {now} by <code>mlplat run</code> '
            f"(<code>mlplat runs --html</code> rewrites it). Each phase links to its rendered notebook.</p>"
            f"{body}</body></html>\n")


def runs(base: Path) -> list[dict]:
    """Every run.json under `base`, newest first (unreadable ones left out)."""
    out = []
    for rj in base.glob("*/run.json"):
        try:
            rec = json.loads(rj.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        rec.setdefault("run_id", rj.parent.name)
        out.append(rec)
    return sorted(out, key=lambda r: (r.get("started") or "", r["run_id"]), reverse=True)


def write_index(base: str | os.PathLike | None = None) -> Path:
    """Write `index.html` into the outputs folder (default: the project's); returns its path."""
    if base is None:
        from .run import outputs_dir

        base = outputs_dir()
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    path = base / INDEX
    tmp = path.with_name(f".{INDEX}.tmp")
    tmp.write_text(render(runs(base), base))
    tmp.replace(path)
    return path
