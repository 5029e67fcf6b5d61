"""`mlplat validate`: every problem at once, with key paths and fixes; exit 2; touches nothing."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from mlplat.params import ParamsError, load_params, read_yaml, validate_data
from mlplat.params.schema import Params

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "params" / "example.yaml"


def _listener():
    """A TCP listener on loopback that counts connections: the 'host' of the bad params file."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.2)
    accepted = []
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            try:
                c, _ = srv.accept()
                accepted.append(c)
            except OSError:
                continue

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return srv, accepted, stop


BAD = {
    "site": "bad site",                                   # 1 pattern
    "mode": "aply",                                       # 2 literal
    "ssh": {"sudo_password": "hunter2-literal",           # 3 secret as literal
            "conect_timeout": 5},                          # 4 unknown key (typo)
    "hosts": [
        {"name": "gpu01", "address": "10.0.0.300", "roles": ["worker"], "gpus": "eight"},   # 5 address, 6 type
        {"name": "gpu01", "address": "10.0.0.2", "roles": ["worker"]},                      # 7 duplicate name
        {"name": "gpu03", "address": "10.0.0.2", "roles": ["worker"]},                      # 8 duplicate address
    ],                                                    # 9 no control-plane host
    "os": {"distro": "centos", "version": "8"},           # 10 unsupported OS
    "kubernetes": {"pod_cidr": "10.96.0.0/16", "service_cidr": "10.96.0.0/12",   # 11 overlap
                   "existing_kubeconfig": None},
    "versions": {"kubernetes": "1.30.2",                  # 12 Kubeflow 26.03 needs 1.34+
                 "istio": "1.4.3",                        # 13 Istio 1.4 on 1.30
                 "cuda": "13.0", "nvidia_driver": "535"},  # 14 CUDA 13 needs 580
}

EXPECTED_PATHS = [
    "site", "mode", "ssh.sudo_password", "ssh.conect_timeout", "hosts[0](gpu01).address", "hosts[0](gpu01).gpus",
    "hosts[1](gpu01).name", "hosts[2](gpu03).address", "hosts", "os.version", "kubernetes.pod_cidr",
    "versions.kubeflow", "versions.istio", "versions.cuda",
]


def test_example_is_valid():
    # the public key files it names live on the operator's machine, not here
    p = load_params(EXAMPLE, check_files=False)
    assert [h.name for h in p.hosts] == ["gpu01", "gpu02"]


def _fields(model, prefix=""):
    from pydantic import BaseModel

    for name, f in model.model_fields.items():
        yield prefix + name
        ann = f.annotation
        for cand in getattr(ann, "__args__", (ann,)):
            if isinstance(cand, type) and issubclass(cand, BaseModel) and cand.__name__ not in ("SecretRef", "HostSSH"):
                yield from _fields(cand, prefix + name + ".")


def test_example_documents_every_key():
    """Every field of the schema appears in params/example.yaml, with a comment on its line or above."""
    text = EXAMPLE.read_text()
    missing = [f for f in _fields(Params) if f.split(".")[-1] + ":" not in text]
    assert missing == [], f"params/example.yaml lacks {missing}"


def test_many_mistakes_all_reported_with_paths_and_fixes():
    model, problems = validate_data(BAD)
    assert model is None
    paths = [p.path for p in problems]
    for expected in EXPECTED_PATHS:
        assert expected in paths, f"{expected} not reported; got {paths}"
    assert all(p.fix for p in problems), [str(p) for p in problems if not p.fix]
    by_path = {p.path: p for p in problems}
    assert "did you mean 'connect_timeout'" in by_path["ssh.conect_timeout"].fix
    assert "reference" in by_path["ssh.sudo_password"].message
    # the literal secret is not echoed back in the message
    assert "hunter2-literal" not in "\n".join(str(p) for p in problems)


def test_cli_exit_2_lists_all_and_opens_no_connection(tmp_path):
    srv, accepted, stop = _listener()
    port = srv.getsockname()[1]
    bad = dict(BAD)
    bad["ssh"] = dict(BAD["ssh"], port=port)
    bad["hosts"] = [dict(h) for h in BAD["hosts"]] + [
        {"name": "reachable", "address": "127.0.0.1", "roles": ["worker"]}]
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(bad))
    try:
        r = subprocess.run([sys.executable, "-m", "mlplat.cli", "validate", str(f)], capture_output=True, text=True,
                           timeout=60)
    finally:
        stop.set()
        srv.close()
    assert r.returncode == 2, r.stderr
    for expected in EXPECTED_PATHS:
        assert expected in r.stderr
    assert "problem(s)" in r.stderr
    assert accepted == [], "validate opened a connection to a host"


def test_yaml_syntax_error_names_file_line_column(tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text("hosts:\n  - name: a\n   address: x\n")
    with pytest.raises(ParamsError) as e:
        read_yaml(f)
    assert f"{f}:3:4" in str(e.value)
    r = subprocess.run([sys.executable, "-m", "mlplat.cli", "validate", str(f)], capture_output=True, text=True)
    assert r.returncode == 2 and f"{f}:3:4: YAML syntax error" in r.stderr


@pytest.mark.parametrize("ref,ok", [({"env": "X"}, True), ({"file": "/x"}, True), ("plain", False),
                                    ({"env": "X", "file": "/y"}, False), ({}, False)])
def test_secret_reference_forms(ref, ok):
    data = {"hosts": [{"name": "a", "address": "10.0.0.1", "roles": ["control-plane"]}], "secrets": {"t": ref}}
    _, problems = validate_data(data)
    assert (problems == []) is ok, problems
