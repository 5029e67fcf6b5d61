"""Notebooks 30, 40 and 99 executed by papermill against the session's lab cluster: shape,
parameters, verdict JSONs; teardown refuses without confirm and cleans up with it."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from shared_kit import needs_offline_bundle

ROOT = Path(__file__).resolve().parents[2]
NB = {n: ROOT / "notebooks" / f"{n}.ipynb" for n in ("30_kubernetes", "40_istio", "99_teardown")}


@pytest.mark.parametrize("name", list(NB))
def test_notebook_shape(name):
    nb = nbformat.read(NB[name], as_version=4)
    prefix = "p" + name[:2]
    assert [c.id for c in nb.cells] == [f"{prefix}-{i:02d}" for i in range(len(nb.cells))]
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith(f"# {name[:2]} ")
    assert nb.cells[1].source == f"from mlplat.phases import {name[3:]} as phase"
    params = nb.cells[2]
    assert params.metadata.get("tags") == ["parameters"]
    for line in params.source.splitlines():
        assert " = " in line and "  # " in line and ": " in line.split(" = ")[0], line
    assert {"params_file", "mode", "run_dir", "confirm"} <= {ln.split(":")[0] for ln in params.source.splitlines()}
    assert nb.cells[-1].source == "phase.finish()"
    for c in nb.cells:
        if c.cell_type == "code":
            assert not c.get("outputs") and c.get("execution_count") is None
    # one markdown heading + one short code cell per step
    body = nb.cells[3:-2]
    assert all(m.cell_type == "markdown" and m.source.startswith("## ") and c.cell_type == "code"
               and c.source.startswith("phase.") and "\n" not in c.source for m, c in zip(body[::2], body[1::2]))


@pytest.mark.parametrize("name", list(NB))
def test_papermill_documents_the_parameters(name):
    import papermill as pm

    got = pm.inspect_notebook(str(NB[name]))
    assert got["mode"]["default"] == '"plan"' and got["mode"]["help"]
    assert got["confirm"]["inferred_type_name"] == "bool"


@pytest.mark.lab_cluster
@pytest.mark.notebooks
@pytest.mark.slow
@needs_offline_bundle
def test_notebooks_run_against_the_lab(lab_site, tmp_path):
    import papermill as pm

    def run(name, **params):
        out = tmp_path / f"{name}.ipynb"
        err = None
        try:
            pm.execute_notebook(str(NB[name]), str(out), parameters={
                "params_file": str(lab_site.params_path), "run_dir": str(tmp_path), **params},
                cwd=str(NB[name].parent), progress_bar=False, kernel_name="python3")
        except pm.PapermillExecutionError as e:
            err = e
        verdict = json.loads((tmp_path / f"verdict-{name}.json").read_text())
        return verdict, err

    v, err = run("30_kubernetes", mode="apply")
    assert err is None and v["ok"], err
    v, err = run("40_istio", mode="apply")
    assert err is None and v["ok"], err
    assert any("injection is NOT exercised" in n for n in v["notes"])
    v, err = run("40_istio", mode="apply")
    assert err is None and v["changed"] == 0
    v, err = run("99_teardown", mode="apply")
    assert err is not None and err.ename == "PhaseFailed" and "confirm is not set" in err.evalue
    assert not v["ok"] and v["changed"] == 0
    v, err = run("99_teardown", mode="apply", confirm=True)
    assert err is None and v["ok"] and v["changed"] > 0
