"""The phase notebooks, executed for real against the lab.

- the main job: `mlplat run` of the default phases in plan mode against the lab; run.json ok and a
  facts row per lab host in the rendered preflight;
- nbval: the golden executed 00_preflight (tests/golden/00_preflight.ipynb, sanitized) re-executes
  against the lab and matches; every phase notebook passes --nbval-lax in plan mode;
- faults: a stopped lab host and a dropped one make preflight fail naming the host, within a bound,
  while the other hosts' facts are still gathered; a canary secret passed by reference appears
  nowhere under outputs/.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from shared_kit import needs_offline_bundle

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"
CANARY = "canary-41d7e0b5-must-not-appear"

pytestmark = [pytest.mark.lab_hosts, pytest.mark.notebooks]


def _env(params: Path, outputs: Path, **extra) -> dict:
    env = os.environ.copy()
    env.update({"MLPLAT_PARAMS": str(params), "MLPLAT_OUTPUTS": str(outputs), **extra})
    return env


def _mlplat(args, env, timeout=900):
    return subprocess.run([sys.executable, "-m", "mlplat.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def _latest_run(outputs: Path) -> Path:
    runs = sorted(p.parent for p in outputs.glob("*/run.json"))
    assert runs, f"no run under {outputs}"
    return max(runs, key=lambda p: json.loads((p / "run.json").read_text())["started"] + p.name)


@needs_offline_bundle
def test_main_job_plan_run(lab, tmp_path):
    """What `make run` does after `lab up`: every default phase in plan mode, archived."""
    params = tmp_path / "site.yaml"
    data = yaml.safe_load(Path(lab.params).read_text())
    data["secrets"] = {"canary": {"env": "MLPLAT_CANARY"}}
    data["ssh"]["sudo_password"] = {"env": "MLPLAT_CANARY"}
    params.write_text(yaml.safe_dump(data))
    outputs = tmp_path / "outputs"
    r = _mlplat(["run", "--params", str(params), "--quiet"], _env(params, outputs, MLPLAT_CANARY=CANARY))
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    run_dir = _latest_run(outputs)
    rec = json.loads((run_dir / "run.json").read_text())
    assert rec["status"] == "ok" and rec["phases"][0]["number"] == "00"
    assert all(p["status"] == "ok" for p in rec["phases"])
    html = (run_dir / "00_preflight.html").read_text()
    for h in data["hosts"]:
        assert f">{h['name']}<" in html, f"no facts row for {h['name']}"
    verdict = json.loads((run_dir / "verdict-00_preflight.json").read_text())
    assert verdict["ok"] and set(verdict["hosts"]) >= {h["name"] for h in data["hosts"]}
    assert any("no GPUs" in n for n in verdict["notes"])
    every = "\n".join(p.read_text(errors="replace") for p in outputs.rglob("*") if p.is_file())
    assert CANARY not in every


def _preflight(params: Path, outputs: Path):
    t0 = time.monotonic()
    r = _mlplat(["run", "--params", str(params), "--only", "00", "--quiet"], _env(params, outputs), timeout=300)
    return r, time.monotonic() - t0


def _one_host_broken(lab, tmp_path, break_it, heal_it):
    data = yaml.safe_load(Path(lab.params).read_text())
    victim = data["hosts"][-1]["name"]
    connect_timeout = data["ssh"]["connect_timeout"]
    outputs = tmp_path / "outputs"
    break_it(victim)
    try:
        r, took = _preflight(Path(lab.params), outputs)
    finally:
        heal_it(victim)
    assert r.returncode == 1, r.stdout + r.stderr
    run_dir = _latest_run(outputs)
    verdict = json.loads((run_dir / "verdict-00_preflight.json").read_text())
    failed_hosts = {f["host"] for f in verdict["failures"]}
    assert failed_hosts == {victim}, verdict["failures"]
    assert any("unreachable" in f["message"].lower() or "timed out" in f["message"].lower()
               for f in verdict["failures"]), verdict["failures"]
    others = [h["name"] for h in data["hosts"] if h["name"] != victim]
    html = (run_dir / "00_preflight.html").read_text()
    for h in others:
        assert f">{h}<" in html
    assert f"{victim}" in r.stdout  # the console names it
    # bounded by the connect timeout (plus notebook start-up, slow on a loaded 2-core machine), not a hang
    assert took < 135 + 3 * connect_timeout, f"preflight with a broken host took {took:.0f} s: a hang?"
    return took


def test_preflight_stopped_host(lab, tmp_path):
    from mlplat.lab import hosts as lab_hosts

    _one_host_broken(lab, tmp_path, lambda n: lab_hosts.stop_host(lab.state_dir, n),
                     lambda n: lab_hosts.start_host(lab.state_dir, n))


def test_preflight_dropped_host(lab, tmp_path):
    data = yaml.safe_load(Path(lab.params).read_text())
    addr = {h["name"]: h["address"] for h in data["hosts"]}

    def drop(n):
        subprocess.run(["iptables", "-I", "INPUT", "-d", addr[n], "-j", "DROP"], check=True)

    def undrop(n):
        subprocess.run(["iptables", "-D", "INPUT", "-d", addr[n], "-j", "DROP"], check=True)

    _one_host_broken(lab, tmp_path, drop, undrop)


def _pytest_nbval(args, env, timeout=900):
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)


def _regenerate_golden(env: dict) -> None:
    """Execute the committed notebook against the lab and store its outputs, sanitized with the
    same patterns nbval applies, without papermill's metadata (local paths)."""
    import re

    import nbformat

    nb_path = GOLDEN / "00_preflight.ipynb"
    subprocess.run([sys.executable, "-m", "papermill", str(ROOT / "notebooks" / "00_preflight.ipynb"), str(nb_path),
                    "--log-level", "ERROR"], env=env, check=True, capture_output=True, timeout=600)
    pats = re.findall(r"^regex: (.*)$\n^replace: (.*)$", (GOLDEN / "sanitize.cfg").read_text(), flags=re.M)

    def clean(text: str) -> str:
        for rx, rep in pats:
            text = re.sub(rx, rep, text)
        return text

    nb = nbformat.read(nb_path, as_version=4)
    nb.metadata.pop("papermill", None)
    for c in nb.cells:
        c.metadata.pop("papermill", None)
        c.metadata.pop("execution", None)
        for o in c.get("outputs", []):
            if "text" in o:
                o["text"] = clean(o["text"])
            for k, v in list(o.get("data", {}).items()):
                if isinstance(v, str):
                    o["data"][k] = clean(v)
    nbformat.write(nb, nb_path)


def test_golden_preflight_matches(lab, tmp_path):
    """Regenerate after an intended change with MLPLAT_UPDATE_GOLDEN=1 and review the diff."""
    env = _env(Path(lab.params), tmp_path / "outputs")
    if os.environ.get("MLPLAT_UPDATE_GOLDEN"):
        _regenerate_golden(env)
    r = _pytest_nbval(["--nbval", str(GOLDEN / "00_preflight.ipynb"),
                       "--nbval-sanitize-with", str(GOLDEN / "sanitize.cfg")], env)
    assert r.returncode == 0, r.stdout[-6000:]


@needs_offline_bundle
def test_all_notebooks_lax_plan_mode(lab, tmp_path):
    env = _env(Path(lab.params), tmp_path / "outputs")
    r = _pytest_nbval(["--nbval-lax", str(ROOT / "notebooks")], env, timeout=1800)
    assert r.returncode == 0, r.stdout[-6000:]
