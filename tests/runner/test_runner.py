"""The runner, for real: papermill executes notebooks, the run is archived and scrubbed, a failing
phase stops the run with its cell and hint, and --resume continues from it.

These use small notebooks written by the test (the phase notebooks themselves are run against
the lab in tests/notebooks), so that failures can be made to order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from mlplat.runner import RunError, discover, history, select
from mlplat.runner import run as run_phases

ROOT = Path(__file__).resolve().parents[2]
CANARY = "canary-7f3a9c2e-do-not-leak"


def _nb(path: Path, body: str) -> None:
    params = new_code_cell('params_file: str = ""  # params\nmode: str = "plan"  # mode\nrun_dir: str = ""  # out')
    params.metadata["tags"] = ["parameters"]
    nb = new_notebook(cells=[new_markdown_cell("# test"), params, new_code_cell(body)],
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(nb, path)


FIRST = f"""
from mlplat.params import load_params, resolve_secret
from mlplat.report import Phase, StepResult
p = load_params(params_file)
# a careless notebook that prints a secret: the archive must still not contain it
print("token:", resolve_secret(p.secrets["canary"]))
print("params at", params_file)
ph = Phase("00", "first", mode)
ph.record("s", [StepResult(host="h1", step="s", changed=True, message="did it")])
ph.finish(run_dir)
"""

SECOND = """
import os
from mlplat.report import Phase, StepResult, failed
ph = Phase("10", "second", mode)
flag = os.environ["MLPLAT_TEST_FLAG"]
ph.record("webhook", [StepResult(host="h1", step="apply") if os.path.exists(flag) else
          failed("h1", "apply", 'Internal error occurred: failed calling webhook "validation.istio.io"')])
ph.finish(run_dir)
"""


@pytest.fixture
def env(tmp_path, monkeypatch):
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    _nb(nbdir / "00_first.ipynb", FIRST)
    _nb(nbdir / "10_second.ipynb", SECOND)
    _nb(nbdir / "99_teardown.ipynb", "print('teardown')")
    params = tmp_path / "site.yaml"
    params.write_text(yaml.safe_dump({
        "site": "t", "hosts": [{"name": "h1", "address": "127.0.0.1", "roles": ["control-plane"]}],
        "secrets": {"canary": {"env": "MLPLAT_TEST_CANARY"}}}))
    monkeypatch.setenv("MLPLAT_NOTEBOOKS", str(nbdir))
    monkeypatch.setenv("MLPLAT_OUTPUTS", str(tmp_path / "outputs"))
    monkeypatch.setenv("MLPLAT_TEST_CANARY", CANARY)
    monkeypatch.setenv("MLPLAT_TEST_FLAG", str(tmp_path / "flag"))
    return tmp_path, params


def test_select():
    phases = discover(ROOT / "notebooks")
    nums = [p.number for p in select(phases)]
    assert nums[0] == "00" and "99" not in nums and nums == sorted(nums)
    assert [p.number for p in select(phases, only="40")] == ["40"]
    assert [p.number for p in select(phases, phases="00,preflight,10")] == ["00", "10"]
    assert [p.number for p in select(phases, start="60")][0] == "60"
    with pytest.raises(RunError, match="no phase 'nope'"):
        select(phases, only="nope")


def _all_text(folder: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file())


def test_failing_phase_stops_and_resume_continues(env, capsys):
    tmp, params = env
    rec = run_phases(params, "plan", progress=False)
    assert rec["status"] == "failed"
    first, second = rec["phases"]
    assert first["status"] == "ok" and first["changed"] == 1
    assert second["status"] == "failed"
    # cell 3 of the executed notebook: papermill inserts the injected-parameters cell
    assert second["failing_cell"]["index"] == 3 and "PhaseFailed" in second["failing_cell"]["error"]
    assert "90_troubleshoot" in second["hint"]
    out = capsys.readouterr().out
    assert "[2/2] 10_second: FAILED" in out and "hint:" in out
    run_dir = tmp / "outputs" / rec["run_id"]
    for name in ("00_first.ipynb", "00_first.html", "verdict-00_first.json", "10_second.ipynb", "10_second.html",
                 "verdict-10_second.json", "run.json", "run.log"):
        assert (run_dir / name).exists(), name
    on_disk = json.loads((run_dir / "run.json").read_text())
    assert on_disk["status"] == "failed" and on_disk["phases"][1]["failing_cell"]["index"] == 3

    # the archive is scrubbed: no secret, no absolute local paths
    text = _all_text(run_dir)
    assert CANARY not in text
    assert "token: ***" in text
    assert str(tmp) not in text and str(ROOT) not in text and str(Path.home()) + "/" not in text

    (tmp / "flag").write_text("up")
    rec2 = subprocess.run([sys.executable, "-m", "mlplat.cli", "run", "--resume", rec["run_id"], "--quiet"],
                          capture_output=True, text=True, env=os.environ.copy(), timeout=300)
    assert rec2.returncode == 0, rec2.stdout + rec2.stderr
    assert "10_second: running" in rec2.stdout and "00_first: running" not in rec2.stdout
    final = json.loads((run_dir / "run.json").read_text())
    assert final["status"] == "ok" and len(final["resumed"]) == 1
    assert [p["status"] for p in final["phases"]] == ["ok", "ok"]
    assert history()[0]["run_id"] == rec["run_id"]
    runs = subprocess.run([sys.executable, "-m", "mlplat.cli", "runs"], capture_output=True, text=True,
                          env=os.environ.copy())
    assert rec["run_id"] in runs.stdout and "2/2" in runs.stdout


def test_invalid_params_run_nothing(env):
    tmp, params = env
    params.write_text("hosts: []\n")
    r = subprocess.run([sys.executable, "-m", "mlplat.cli", "run", "--params", str(params)],
                       capture_output=True, text=True, env=os.environ.copy(), timeout=120)
    assert r.returncode == 2 and "hosts" in r.stderr
    assert not (tmp / "outputs").exists() or not any((tmp / "outputs").iterdir())
