"""The run history page (mlplat.runner.history_page) from run.json files: order, links, colours,
escaping; `mlplat runs --html`. Real runs against the lab are in tests/browser/test_run_history.py
and tests/interactive/test_progress.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

from mlplat.runner import history_page as history


def _run(base: Path, run_id: str, started: str, status: str, phases: list[dict], **extra) -> Path:
    d = base / run_id
    d.mkdir(parents=True)
    for p in phases:
        stem = f"{p['number']}_{p['name']}"
        if p.get("status") in ("ok", "failed"):
            (d / f"{stem}.html").write_text(f"<html><body>{stem}</body></html>")
            (d / f"{stem}.ipynb").write_text("{}")
            (d / f"verdict-{stem}.json").write_text(json.dumps({"ok": p["status"] == "ok"}))
            p.setdefault("html", f"{stem}.html")
            p.setdefault("notebook", f"{stem}.ipynb")
            p.setdefault("verdict", f"verdict-{stem}.json")
    rec = {"run_id": run_id, "params_file": "<params>/site.yaml", "mode": "plan", "started": started,
           "status": status, "duration_s": 135.0, "phases": phases, **extra}
    (d / "run.json").write_text(json.dumps(rec))
    (d / "run.log").write_text("")
    return d


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs, self.scripts = [], 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a":
            self.hrefs.append(a["href"])
        if tag == "script" or (tag == "link" and a.get("rel") == "stylesheet"):
            self.scripts += 1


def test_page_lists_runs_newest_first_with_working_links(tmp_path):
    _run(tmp_path, "20260101-100000-plan-aaaa", "2026-01-01T10:00:00+00:00", "ok",
         [{"number": "00", "name": "preflight", "status": "ok", "duration_s": 4.2, "changed": 0},
          {"number": "10", "name": "host_prep", "status": "ok", "duration_s": 9.0, "changed": 3}])
    _run(tmp_path, "20260102-100000-apply-bbbb", "2026-01-02T10:00:00+00:00", "failed",
         [{"number": "00", "name": "preflight", "status": "ok", "duration_s": 4.0},
          {"number": "10", "name": "host_prep", "status": "failed", "duration_s": 2.0,
           "failing_cell": {"index": 7, "source": "phase.packages()", "error": "PhaseFailed: n1: <boom> & more"},
           "hint": "check the mirror"},
          {"number": "20", "name": "gpu_runtime", "status": "pending"}], resumed=["2026-01-02T11:00:00+00:00"])
    (tmp_path / "not-a-run").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "run.json").write_text("{not json")

    page = history.write_index(tmp_path)
    assert page == tmp_path / "index.html"
    text = page.read_text()
    rows = re.findall(r'<tr class="run" id="run-([^"]+)" data-run="[^"]+" data-status="([^"]+)"', text)
    assert rows == [("20260102-100000-apply-bbbb", "failed"), ("20260101-100000-plan-aaaa", "ok")]
    # escaped, never raw
    assert "&lt;boom&gt; &amp; more" in text and "<boom>" not in text
    assert "hint: check the mirror" in text and "resumed 1x" in text
    assert 'data-phase="20_gpu_runtime" data-status="pending"' in text  # no link for a phase not run
    assert "3 changed" in text and "2m15s" in text
    # static: no script, no external resource; every link relative and pointing at a file
    links = _Links()
    links.feed(text)
    assert links.scripts == 0 and "http" not in text.replace("http-equiv", "")
    assert links.hrefs and all((tmp_path / h).is_file() for h in links.hrefs), links.hrefs
    # coloured: ok and failed badges differ
    assert history.COLOURS["ok"] in text and history.COLOURS["failed"] in text


def test_empty_outputs(tmp_path):
    text = history.write_index(tmp_path / "outputs").read_text()
    assert "No runs yet" in text


def test_runs_html_command(tmp_path):
    _run(tmp_path, "20260101-100000-plan-aaaa", "2026-01-01T10:00:00+00:00", "ok",
         [{"number": "00", "name": "preflight", "status": "ok"}])
    env = dict(os.environ, MLPLAT_OUTPUTS=str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "mlplat.cli", "runs", "--html"], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"run history: {(tmp_path / 'index.html').resolve().as_uri()}"
    assert "20260101-100000-plan-aaaa" in (tmp_path / "index.html").read_text()
    r = subprocess.run([sys.executable, "-m", "mlplat.cli", "runs"], capture_output=True, text=True, env=env,
                       timeout=60)
    assert "20260101-100000-plan-aaaa" in r.stdout  # the text listing is unchanged
