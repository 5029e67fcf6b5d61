"""Cell by cell, as in JupyterLab but driven by nbclient: cells run out of order, twice, or before
the setup cell, against the lab.

- a step cell before the setup cell (fresh kernel, or after the import cell only) gives the one
  SetupFirst message naming the cell to run first, one line, never a NameError;
- every cell run again, in order, gives the same tables; the verdict cell run twice counts the
  same (nothing double-counted).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest
import yaml
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "00_preflight.ipynb"


def _cells(nb) -> dict[str, int]:
    """Index of the cells the tests use, found by what they hold."""
    idx = {}
    for i, c in enumerate(nb.cells):
        if c.cell_type != "code":
            continue
        src = c.source
        if "parameters" in c.metadata.get("tags", []):
            idx["parameters"] = i
        elif src.startswith("from mlplat.phases import"):
            idx["import"] = i
        elif "phase.setup(" in src:
            idx["setup"] = i
        elif "phase.facts()" in src:
            idx["facts"] = i
        elif "phase.finish()" in src:
            idx["verdict"] = i
    assert set(idx) == {"parameters", "import", "setup", "facts", "verdict"}, idx
    return idx


def _run(client: NotebookClient, nb, i: int) -> list:
    try:
        client.execute_cell(nb.cells[i], i)
    except CellExecutionError:
        pass  # the error is in the cell's outputs, where JupyterLab shows it
    return nb.cells[i].outputs


def _errors(outputs) -> list:
    return [o for o in outputs if o.output_type == "error"]


def _assert_setup_first(outputs, mentions: str) -> None:
    errs = _errors(outputs)
    assert len(errs) == 1, outputs
    e = errs[0]
    assert e.ename == "SetupFirst", (e.ename, e.evalue)
    assert mentions in e.evalue and "'Setup' cell" in e.evalue, e.evalue
    assert len(e.traceback) == 1, e.traceback  # one message, not a traceback through the library
    assert "NameError" not in "".join(e.traceback)


@pytest.fixture
def lab_env(lab, monkeypatch, tmp_path):
    """The kernel finds the lab's params as under `mlplat notebook`: $MLPLAT_PARAMS."""
    monkeypatch.setenv("MLPLAT_PARAMS", str(lab.params))
    monkeypatch.delenv("MLPLAT_RUN_DIR", raising=False)
    monkeypatch.setenv("MLPLAT_PROGRESS", "off")  # bars are tested elsewhere; keep outputs comparable
    return lab


@pytest.fixture(scope="module")
def mlplat_kernel():
    from mlplat.notebook import KERNEL_NAME, ensure_kernel

    ensure_kernel()
    return KERNEL_NAME


pytestmark = [pytest.mark.lab_hosts, pytest.mark.notebooks]


def test_step_cell_first_in_a_fresh_mlplat_kernel(lab_env, mlplat_kernel):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    c = _cells(nb)
    client = NotebookClient(nb, kernel_name=mlplat_kernel, timeout=120)
    with client.setup_kernel():
        # Nothing run yet: not even `phase` exists.
        _assert_setup_first(_run(client, nb, c["facts"]), "`phase`")
        # The import ran, the parameters cell did not: the setup cell says so.
        _run(client, nb, c["import"])
        _assert_setup_first(_run(client, nb, c["setup"]), "`params_file`")
        # The import and parameters ran, not the setup cell.
        _run(client, nb, c["parameters"])
        _assert_setup_first(_run(client, nb, c["facts"]), "phase 00")
        _assert_setup_first(_run(client, nb, c["verdict"]), "phase 00")
        # Then in order, it works.
        assert not _errors(_run(client, nb, c["setup"]))
        out = _run(client, nb, c["facts"])
        assert not _errors(out)
        html = next(o.data["text/html"] for o in out if "text/html" in o.get("data", {}))
        for h in yaml.safe_load(Path(lab_env.params).read_text())["hosts"]:
            assert f">{h['name']}<" in html


def test_step_cell_before_setup_in_papermills_kernel(lab_env):
    """The python3 kernel (papermill's) has no mlplat extension: after the import cell, the step
    cell still gives the SetupFirst message."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    c = _cells(nb)
    client = NotebookClient(nb, kernel_name="python3", timeout=120)
    with client.setup_kernel():
        _run(client, nb, c["import"])
        _assert_setup_first(_run(client, nb, c["facts"]), "phase 00")


_NUM = re.compile(r"\d+(\.\d+)?")


def _texts(outputs) -> list[str]:
    """What a cell showed, numbers masked (durations, free space, load vary between runs)."""
    out = []
    for o in outputs:
        if o.output_type == "stream":
            out.append(o.text)
        elif o.output_type in ("execute_result", "display_data"):
            out.append(o.data.get("text/plain", ""))
        elif o.output_type == "error":
            out.append(f"{o.ename}: {o.evalue}")
    return [_NUM.sub("N", t) for t in out]


def test_rerun_every_cell_and_the_verdict_twice(lab_env, mlplat_kernel, tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    c = _cells(nb)
    nb.cells[c["parameters"]].source += f'\nrun_dir = "{tmp_path}"'
    code = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"]
    verdict_file = tmp_path / "verdict-00_preflight.json"
    client = NotebookClient(nb, kernel_name=mlplat_kernel, timeout=120)
    with client.setup_kernel():
        first = {i: _texts(_run(client, nb, i)) for i in code}
        assert not any(t.startswith(("SetupFirst", "PhaseFailed")) for ts in first.values() for t in ts), first
        v1 = json.loads(verdict_file.read_text())
        # The verdict cell again, twice: same counts, same table.
        for _ in range(2):
            assert _texts(_run(client, nb, c["verdict"])) == first[c["verdict"]]
            v = json.loads(verdict_file.read_text())
            assert (v["counts"], v["hosts"], v["failures"], v["steps"]) == \
                (v1["counts"], v1["hosts"], v1["failures"], v1["steps"])
        # Every cell again, in order (setup included: it starts the phase afresh).
        second = {i: _texts(_run(client, nb, i)) for i in code}
        assert second == first
        v2 = json.loads(verdict_file.read_text())
        assert (v2["counts"], v2["hosts"]) == (v1["counts"], v1["hosts"])
        # A step cell after the verdict still works (the verdict closed the SSH connections).
        assert _texts(_run(client, nb, c["facts"])) == first[c["facts"]]
