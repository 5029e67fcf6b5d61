"""`mlplat notebook` without starting JupyterLab: the command line and environment it would exec,
the kernelspec it installs, and its refusals. The real server is tested in tests/browser."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from mlplat import notebook


@pytest.fixture
def params(tmp_path) -> Path:
    p = tmp_path / "site.yaml"
    p.write_text("site: x\n")
    return p


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for k in ("JUPYTER_TOKEN", "MLPLAT_PARAMS", "MLPLAT_RUN_DIR"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("MLPLAT_LAB_DIR", str(tmp_path / "no-lab"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_loopback_token_notebooks_and_params(clean_env, params, tmp_path):
    port = _free_port()
    plan = notebook.prepare(params, port, tmp_path)
    argv = plan["argv"]
    assert argv[:3] == [sys.executable, "-m", "jupyterlab"]
    assert "--ServerApp.ip=127.0.0.1" in argv and f"--ServerApp.port={port}" in argv
    assert "--ServerApp.port_retries=0" in argv and f"--ServerApp.root_dir={tmp_path.resolve()}" in argv
    assert "--KernelSpecManager.allowed_kernelspecs=mlplat" in argv
    token = plan["env"]["JUPYTER_TOKEN"]
    assert len(token) >= 32 and not any(token in a for a in argv)  # in the environment, not on `ps`
    assert plan["url"] == f"http://127.0.0.1:{port}/lab?token={token}"
    assert plan["env"]["MLPLAT_PARAMS"] == str(params.resolve())
    assert notebook.prepare(params, _free_port(), tmp_path)["env"]["JUPYTER_TOKEN"] != token  # fresh each time


def test_params_default_to_env_then_lab(clean_env, monkeypatch, params, tmp_path):
    assert notebook.select_params(None) is None
    lab = tmp_path / "no-lab"
    lab.mkdir()
    (lab / "params.yaml").write_text("site: lab\n")
    assert notebook.select_params(None) == (lab / "params.yaml").resolve()
    monkeypatch.setenv("MLPLAT_PARAMS", str(params))
    assert notebook.select_params(None) == params.resolve()
    with pytest.raises(notebook.NotebookError, match="does not exist"):
        notebook.select_params(tmp_path / "missing.yaml")


def test_port_in_use_is_refused(clean_env, params, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(notebook.NotebookError, match=f"port {port}"):
            notebook.prepare(params, port, tmp_path)
        r = subprocess.run([sys.executable, "-m", "mlplat.cli", "notebook", "--params", str(params), "--port",
                            str(port), "--notebook-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "is in use" in r.stderr


def test_kernel_installed_once(monkeypatch, tmp_path):
    """Installed into this environment's prefix (here a stand-in), then found as is."""
    import jupyter_core.paths as jp

    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    # Jupyter's search path, cut down to the stand-in prefix (the real one may hold an mlplat kernel).
    monkeypatch.setattr(jp, "ENV_JUPYTER_PATH", [str(tmp_path / "share" / "jupyter")])
    monkeypatch.setattr(jp, "SYSTEM_JUPYTER_PATH", [str(tmp_path / "system")])
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "user"))
    monkeypatch.delenv("JUPYTER_PATH", raising=False)
    d, installed = notebook.ensure_kernel()
    assert installed and d == tmp_path / "share" / "jupyter" / "kernels" / "mlplat"
    spec = json.loads((d / "kernel.json").read_text())
    assert spec["argv"] == notebook.kernel_argv() and spec["argv"][0] == sys.executable
    assert spec["language"] == "python" and spec["display_name"].startswith("mlplat")
    assert notebook.ensure_kernel() == (d, False)
    # pointing at another Python: repaired
    spec["argv"][0] = "/usr/bin/python-elsewhere"
    (d / "kernel.json").write_text(json.dumps(spec))
    assert notebook.ensure_kernel() == (d, True)
