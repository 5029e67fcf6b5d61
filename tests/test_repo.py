"""Repository hygiene: notebooks committed without outputs and with their parameters cell;
environment.yml generated from pyproject.toml."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
PARAM_LINE = re.compile(r"^[a-z_][a-z0-9_]*: [a-z]+ = .+  # .+$")


def test_all_phases_present():
    stems = {p.name.split("_")[0] for p in NOTEBOOKS}
    assert {"00", "10", "20", "30", "40", "50", "60", "90", "99"} <= stems


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_stripped_and_tagged(nb):
    data = json.loads(nb.read_text())
    for cell in data["cells"]:
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [] and cell.get("execution_count") is None, \
                f"{nb.name}: commit notebooks without outputs"
    params = [c for c in data["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1, f"{nb.name}: exactly one cell tagged 'parameters'"
    lines = [l for l in "".join(params[0]["source"]).splitlines() if l.strip()]
    bad = [l for l in lines if not PARAM_LINE.match(l)]
    assert not bad, f"{nb.name}: parameter lines must read 'name: type = default  # help': {bad}"
    first = data["cells"][0]
    assert first["cell_type"] == "markdown" and first["source"][0].startswith("# ")
    assert data["cells"][-1]["cell_type"] == "code" and "finish()" in "".join(data["cells"][-1]["source"])


def test_notebooks_readme_lists_every_notebook():
    text = (ROOT / "notebooks" / "README.md").read_text()
    missing = [p.name for p in NOTEBOOKS if p.name not in text]
    assert not missing, f"notebooks/README.md does not list {missing}"


def test_environment_yml_matches_pyproject():
    from mlplat.envfile import ROOT as ENVROOT, render

    assert ENVROOT == ROOT
    assert (ROOT / "environment.yml").read_text() == render(), "run `python -m mlplat.envfile`"


def test_kubernetes_pin_is_not_a_broken_release():
    text = (ROOT / "pyproject.toml").read_text()
    m = re.search(r'"kubernetes==([0-9.]+)"', text)
    assert m and m.group(1) not in ("36.0.0", "36.0.1")
