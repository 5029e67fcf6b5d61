"""Progress bars (mlplat.report.progress): a widget when an interactive front end runs the cell,
plain text lines under papermill, nbclient and nbval, in the archived notebook and its HTML, and
no widget in an archive (whose HTML would show nothing, or "Error displaying widget")."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import nbformat
import pytest
from mlplat.report import progress as progress_mod

CODE = """
import time
from mlplat.report.progress import bar
with bar(total=2, desc="wait | test", unit="host") as bar:
    for _ in range(2):
        time.sleep(0.2)
        bar.update(1)
"""


def test_mode_outside_a_kernel(monkeypatch):
    monkeypatch.delenv("MLPLAT_PROGRESS", raising=False)
    assert progress_mod.mode() == "text"
    for forced in ("widget", "text", "off"):
        monkeypatch.setenv("MLPLAT_PROGRESS", forced)
        assert progress_mod.mode() == forced


def test_text_lines_not_redraws(monkeypatch):
    monkeypatch.delenv("MLPLAT_PROGRESS", raising=False)
    out = io.StringIO()
    with progress_mod.bar(total=3, desc="facts | gather", unit="host", file=progress_mod.LineWriter(out),
                               delay=0, mininterval=0) as bar:
        for _ in range(3):
            bar.update(1)
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert lines[0].startswith("facts | gather:   0%") and "3/3" in lines[-1]
    assert len(lines) == len(set(lines))


def test_quick_waits_print_nothing_in_text_mode(monkeypatch, capsys):
    monkeypatch.delenv("MLPLAT_PROGRESS", raising=False)
    monkeypatch.delenv("MLPLAT_PROGRESS_DELAY", raising=False)
    with progress_mod.bar(total=2, desc="quick", unit="host") as bar:
        bar.update(2)
    assert capsys.readouterr().out == ""


def _execute(code: str, allow_stdin: bool, env: dict) -> list[dict]:
    """Run `code` in a fresh python3 kernel as a front end would; return its iopub outputs."""
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3", env=env)
    try:
        msg_id = kc.execute(code, allow_stdin=allow_stdin)
        outputs = []
        while True:
            msg = kc.get_iopub_msg(timeout=60)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            t = msg["msg_type"]
            if t == "status" and msg["content"]["execution_state"] == "idle":
                return outputs
            if t in ("stream", "display_data", "execute_result", "error"):
                outputs.append({"type": t, **msg["content"]})
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLPLAT_PROGRESS")}
    env.update(extra)
    return env


def test_widget_for_an_interactive_front_end():
    """JupyterLab sends allow_stdin: the bar is an ipywidgets model, shown as a widget view."""
    outs = _execute(CODE, allow_stdin=True, env=_env())
    views = [o for o in outs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert views and views[0]["data"]["application/vnd.jupyter.widget-view+json"]["model_id"], outs
    assert not [o for o in outs if o["type"] == "error"], outs


def test_text_for_a_batch_executor():
    """papermill, nbclient and nbval say they cannot answer input(): text lines, no widget."""
    outs = _execute(CODE, allow_stdin=False, env=_env(MLPLAT_PROGRESS_DELAY="0"))
    assert not [o for o in outs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})], outs
    text = "".join(o.get("text", "") for o in outs if o["type"] == "stream")
    assert "wait | test:" in text and "2/2" in text and "\r" not in text, outs


@pytest.mark.lab_hosts
@pytest.mark.notebooks
def test_archived_run_shows_text_progress_and_no_widgets(lab, tmp_path):
    """`mlplat run` of 00_preflight with every bar shown (MLPLAT_PROGRESS_DELAY=0): the archived
    notebook and its HTML hold the text lines of the host fan-outs and no widget at all."""
    outputs = tmp_path / "outputs"
    env = _env(MLPLAT_OUTPUTS=str(outputs), MLPLAT_PROGRESS_DELAY="0")
    env.pop("MLPLAT_PARAMS", None)
    r = subprocess.run([sys.executable, "-m", "mlplat.cli", "run", "--params", str(lab.params), "--only", "00",
                        "--quiet"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    run_dir = next(p.parent for p in outputs.glob("*/run.json"))
    nb = nbformat.read(run_dir / "00_preflight.ipynb", as_version=4)
    assert "widgets" not in nb.metadata
    outs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    lines = "".join(o.text for o in outs if o.output_type == "stream")
    n_hosts = len(json.loads((run_dir / "verdict-00_preflight.json").read_text())["hosts"]) - 1  # (params)
    for step in ("ssh+sudo | reach", "facts | gather"):
        assert f"{step}: 100%" in lines and f"{n_hosts}/{n_hosts}" in lines, lines
    html = (run_dir / "00_preflight.html").read_text()
    assert "facts | gather: 100%" in html
    for bad in ("Error displaying widget", "widget-view+json", "widget-state+json", "unpkg.com"):
        assert bad not in html, bad
    assert (outputs / "index.html").is_file()  # every run writes the history page
