"""notebooks/50_kubeflow.ipynb executed by papermill in plan mode (no cluster given): the
training-only profile passes; the default set fails in the verdict cell, naming the kit's
missing remote bases; the run folder holds the build, the image list and the mirror plan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "50_kubeflow.ipynb"

pytestmark = [pytest.mark.notebooks, pytest.mark.slow]


def _params(path: Path, **kubeflow) -> Path:
    path.write_text(yaml.safe_dump({
        "site": "kf-notebook",
        "hosts": [{"name": "node-1", "address": "192.0.2.10", "roles": ["control-plane", "worker"]}],
        "kubeflow": kubeflow,
    }, sort_keys=False))
    return path


def _run(params: Path, run_dir: Path, out: Path):
    import papermill as pm

    return pm.execute_notebook(str(NOTEBOOK), str(out), parameters={"params_file": str(params), "mode": "plan",
                                                                     "run_dir": str(run_dir)},
                               kernel_name="python3", progress_bar=False, cwd=str(ROOT))


def test_notebook_plan_training_only(tmp_path, kf_cache, built, monkeypatch, no_network):
    monkeypatch.setenv("MLPLAT_CACHE", str(kf_cache))
    params = _params(tmp_path / "site.yaml", components="training-only", istio_owner="kubeflow",
                     image_mirror={"mode": "registry", "registry": "registry.example.internal:5000"})
    _run(params, tmp_path / "run", tmp_path / "out.ipynb")
    verdict = json.loads((tmp_path / "run" / "verdict-50_kubeflow.json").read_text())
    assert verdict["ok"] and verdict["mode"] == "plan"
    assert verdict["steps"] == ["source", "remotes", "build", "images", "mirror", "pull_policy", "pull_check", "istio",
                                "apply", "verify", "dashboard"]
    files = {p.name for p in (tmp_path / "run" / "kubeflow").iterdir()}
    assert {"kubeflow.yaml", "images.txt", "images.json", "mirror-registry.sh", "pull-check.json"} <= files
    assert len((tmp_path / "run" / "kubeflow" / "images.txt").read_text().split()) == 18


def test_notebook_plan_default_fails_on_the_kit(tmp_path, kf_cache, built, monkeypatch):
    import papermill as pm

    monkeypatch.setenv("MLPLAT_CACHE", str(kf_cache))
    params = _params(tmp_path / "site.yaml", components="default", istio_owner="kubeflow")
    with pytest.raises(pm.PapermillExecutionError) as e:
        _run(params, tmp_path / "run", tmp_path / "out.ipynb")
    assert "PhaseFailed" in str(e.value.ename) and "argo-workflows" in str(e.value.evalue)
    nb = json.loads((tmp_path / "out.ipynb").read_text())
    failing = [c for c in nb["cells"] if c["cell_type"] == "code" and any(o.get("output_type") == "error"
                                                                          for o in c.get("outputs", []))]
    assert ["".join(c["source"]) for c in failing] == ["phase.finish()"]
    assert (tmp_path / "run" / "kubeflow" / "record-kit.sh").exists()
