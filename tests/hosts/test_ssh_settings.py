"""SSH settings resolution and small helpers of mlplat.hosts.ssh (no server needed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import paramiko
import pytest
from mlplat.hosts import HostPool, fingerprint, known_hosts_name
from mlplat.hosts.ssh import CommandResult, settings_for
from mlplat.params import Params


def params(**ssh) -> Params:
    return Params.model_validate({
        "hosts": [
            {"name": "gpu-1", "address": "10.0.0.11", "roles": ["control-plane"]},
            {"name": "gpu-2", "address": "10.0.0.12", "roles": ["worker"],
             "ssh": {"user": "ops", "port": 2201, "key_file": "keys/gpu2"}},
        ],
        "ssh": {"user": "admin", "key_file": "~/.ssh/id_site", "known_hosts": "pinned_hosts", **ssh},
    })


def test_per_host_settings_win_and_paths_resolve(tmp_path):
    p = params(connect_timeout=3, command_timeout=42)
    one, two = (settings_for(p, h, tmp_path) for h in p.hosts)
    assert (one.user, one.port, two.user, two.port) == ("admin", 22, "ops", 2201)
    assert one.key_file == Path.home() / ".ssh/id_site"
    assert two.key_file == tmp_path / "keys/gpu2"
    assert one.known_hosts == tmp_path / "pinned_hosts"
    assert (one.connect_timeout, one.command_timeout) == (3, 42)


def test_relative_paths_without_base_dir_start_at_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = settings_for(params(), params().hosts[0])
    assert s.known_hosts == tmp_path / "pinned_hosts"


def test_pool_selects_hosts_in_params_order():
    pool = HostPool(params())
    assert [h.name for h in pool.select(["gpu-2", "gpu-1"])] == ["gpu-1", "gpu-2"]
    assert pool.connection("gpu-2") is pool.connection("gpu-2")
    assert pool.connection("gpu-2").port == 2201
    with pytest.raises(KeyError, match="no host named 'gpu-9'"):
        pool.select(["gpu-9"])
    assert pool.run(lambda c, h: None, "nothing", hosts=[]) == []


def test_known_hosts_name():
    assert known_hosts_name("10.0.0.11", 22) == "10.0.0.11"
    assert known_hosts_name("10.0.0.11", 2201) == "[10.0.0.11]:2201"


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen not installed")
def test_fingerprint_matches_ssh_keygen(tmp_path):
    key = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    expected = subprocess.run(["ssh-keygen", "-lf", str(key) + ".pub"], capture_output=True, text=True,
                              check=True).stdout.split()[1]
    assert fingerprint(paramiko.Ed25519Key.from_private_key_file(str(key))) == expected


def test_command_summary():
    ok = CommandResult("h", "c", "a\nb\nc\nd\n", "", 0, 0.1)
    assert ok.summary() == "exit 0: b | c | d"
    bad = CommandResult("h", "c", "out\n", "E: no such package\n", 100, 0.1)
    assert bad.summary() == "exit 100: E: no such package" and not bad.ok
    long = CommandResult("h", "c", "x" * 1000, "", 0, 0.1)
    assert len(long.summary()) < 420
