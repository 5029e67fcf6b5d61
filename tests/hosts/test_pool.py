"""HostPool against real sshd lab hosts: fan-out, sudo, failures that stay one host's problem,
bounded time, pinned host keys. No mocks: hosts are stopped, frozen, firewalled and re-keyed for real."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
import uuid

import pytest
from mlplat.hosts import HostPool, facts_table, gather_facts, known_hosts_name
from mlplat.lab import hosts as lab
from mlplat.params import Params
from mlplat.report import StepResult, results_table

pytestmark = pytest.mark.lab_hosts

# Timeout of the failure tests: short to keep them quick; the bound asserted is generous on purpose
# (a hang check, not a speed claim).
CONNECT_TIMEOUT = 2.0


def bound(connect_timeout: float = CONNECT_TIMEOUT) -> float:
    return connect_timeout * 3 + 10


def with_ssh(pool: HostPool, **ssh) -> HostPool:
    """A new pool on the same hosts with some ssh settings changed."""
    data = pool.params.model_dump(exclude_none=True)
    data["ssh"].update(ssh)
    return HostPool(Params.model_validate(data), base_dir=pool.base_dir)


def by_host(results):
    return {r.host: r for r in results}


def test_run_calls_fn_on_every_host_in_parallel(lab_pool, lab_hosts):
    def fn(conn, host):
        r = conn.run("date +%s.%N; sleep 1; hostname; date +%s.%N", check=True)
        start, name, end = r.stdout.split()
        return StepResult(host=host.name, step="who", message=name, data={"start": float(start), "end": float(end)})

    # Connections first (SSH handshakes are not what is measured), then the commands. The lab hosts
    # share this machine's clock, so each host's own timestamps around its sleep show the overlap,
    # however slow a loaded machine makes the rest.
    connected = lab_pool.connect()
    assert all(r.ok for r in connected), [r.message for r in connected if not r.ok]
    t0 = time.monotonic()
    results = lab_pool.run(fn, "who")
    elapsed = time.monotonic() - t0
    assert [r.host for r in results] == lab_hosts.names  # params order
    assert all(r.ok and r.message == r.host for r in results), [r.message for r in results]  # own hostnames
    spans = {r.host: (r.data["start"], r.data["end"]) for r in results}
    assert max(s for s, _ in spans.values()) < min(e for _, e in spans.values()), \
        f"the hosts' sleeps did not overlap, not parallel: {spans}"
    assert elapsed < 30, f"3 x sleep 1 took {elapsed:.1f}s: hung?"


def test_sh_output_exit_and_check(lab_pool):
    results = lab_pool.sh("echo out; echo err >&2; exit 3", "sh | exit 3", check=False)
    assert all(r.ok and r.data == {"stdout": "out\n", "stderr": "err\n", "exit": 3} for r in results)
    failed = lab_pool.sh("echo out; echo 'E: Unable to locate package nope' >&2; exit 100", "sh | fail")
    assert all(not r.ok and r.message == "exit 100: E: Unable to locate package nope" for r in failed)
    table = results_table(failed)
    assert list(table.frame["status"]) == ["failed"] * 3


def test_hosts_subset_and_unknown_name(lab_pool, lab_hosts):
    results = lab_pool.sh("true", "one", hosts=[lab_hosts.names[1]])
    assert [r.host for r in results] == [lab_hosts.names[1]]
    with pytest.raises(KeyError, match="no host named 'nope'"):
        lab_pool.sh("true", "x", hosts=["nope"])


def test_exception_in_fn_is_that_hosts_failure(lab_pool, lab_hosts):
    bad = lab_hosts.names[0]

    def fn(conn, host):
        if host.name == bad:
            raise ValueError("boom")
        conn.run("true", check=True)

    results = by_host(lab_pool.run(fn, "maybe"))
    assert not results[bad].ok and results[bad].message == "ValueError: boom"
    assert all(r.ok for h, r in results.items() if h != bad)


def test_command_timeout_is_reported_with_hint(lab_pool):
    t0 = time.monotonic()
    results = lab_pool.sh("sleep 30", "sleep", timeout=1)
    assert time.monotonic() - t0 < 10
    for r in results:
        assert not r.ok and "command timed out after 1s" in r.message
        assert "timeout" in r.hint
    # The connection survives a timed-out command.
    assert all(r.ok for r in lab_pool.sh("true", "after"))


def test_connections_are_reused(lab_pool, lab_hosts):
    name = lab_hosts.names[0]
    lab_pool.sh("true", "a", hosts=[name])
    first = lab_pool.connection(name).connection.transport
    lab_pool.sh("true", "b", hosts=[name])
    assert lab_pool.connection(name).connection.transport is first
    lab_pool.close()
    assert lab_pool.sh("true", "after close", hosts=[name])[0].ok  # reopens


def test_root_needs_no_sudo(lab_pool):
    results = lab_pool.check_sudo()
    assert all(r.ok and r.message == "root ok (as root)" for r in results)
    assert all(r.ok and r.data["stdout"] == "0\n" for r in lab_pool.sh("id -u", "sudo id", sudo=True))


@pytest.mark.skipif(shutil.which("sudo") is None, reason="sudo is not installed on this machine (apt-get install sudo)")
def test_sudo_with_password_from_a_reference(lab_pool, lab_hosts, monkeypatch):
    from mlplat.report.scrub import registered

    host = lab_hosts.names[0]
    user = "mlops" + uuid.uuid4().hex[:6]
    password = "pw-" + uuid.uuid4().hex
    # A sudoer with a password, on one lab host only (home under /opt: an overlaid tree).
    setup = (f"useradd -m -d /opt/{user} -s /bin/sh {user} && echo '{user}:{password}' | chpasswd && "
             f"echo '{user} ALL=(ALL) ALL' > /etc/sudoers.d/{user} && chmod 0440 /etc/sudoers.d/{user}")
    assert lab_pool.sh(setup, "create sudoer", hosts=[host])[0].ok
    var = "MLPLAT_TEST_SUDO_" + uuid.uuid4().hex[:6].upper()
    monkeypatch.setenv(var, password)
    with with_ssh(lab_pool, user=user, sudo_password={"env": var}) as pool:
        ok = pool.check_sudo(hosts=[host])[0]
        assert ok.ok and ok.message == "root ok (sudo with password)", ok.message
        r = pool.sh("id -un; cat /etc/sudoers.d/" + user, "sudo", sudo=True, hosts=[host])[0]
        assert r.ok and r.data["stdout"].startswith("root\n")
        assert password not in repr(r.to_dict())
    assert password in registered()  # resolved through the scrubber: archives mask it
    monkeypatch.setenv(var, "wrong-" + password)
    with with_ssh(lab_pool, user=user, sudo_password={"env": var}) as pool:
        bad = pool.check_sudo(hosts=[host])[0]
        assert not bad.ok and "incorrect password" in bad.message and "sudo_password" in bad.hint
    with with_ssh(lab_pool, user=user) as pool:
        nopw = pool.check_sudo(hosts=[host])[0]
        assert not nopw.ok and "password is required" in nopw.message and "sudo_password" in nopw.hint
    monkeypatch.delenv(var)
    with with_ssh(lab_pool, user=user, sudo_password={"env": var}) as pool:
        unset = pool.check_sudo(hosts=[host])[0]
        assert not unset.ok and f"{var} is not set" in unset.message and "export" in unset.hint


def test_stopped_host_is_unreachable_others_gathered(lab_pool, lab_hosts):
    victim = lab_hosts.names[1]
    lab.stop_host(lab_hosts.state_dir, victim)
    with with_ssh(lab_pool, connect_timeout=CONNECT_TIMEOUT) as pool:
        t0 = time.monotonic()
        results = by_host(gather_facts(pool))
        elapsed = time.monotonic() - t0
    assert not results[victim].ok
    assert results[victim].message.startswith(f"unreachable: {lab_hosts.addresses[victim]}:{lab_hosts.port} refused")
    assert "sshd runs" in results[victim].hint
    assert all(r.ok and r.data["hostname"] == h for h, r in results.items() if h != victim)
    assert elapsed < bound(), f"took {elapsed:.1f}s"


@pytest.mark.skipif(shutil.which("iptables") is None, reason="iptables is not installed (apt-get install iptables)")
def test_dropped_host_times_out_within_the_connect_timeout(lab_pool, lab_hosts):
    victim = lab_hosts.names[2]
    rule = ["INPUT", "-d", lab_hosts.addresses[victim], "-j", "DROP"]
    added = subprocess.run(["iptables", "-I", *rule], capture_output=True, text=True)
    if added.returncode != 0:
        pytest.skip(f"iptables cannot add rules here: {added.stderr.strip()}")
    try:
        with with_ssh(lab_pool, connect_timeout=CONNECT_TIMEOUT) as pool:
            t0 = time.monotonic()
            results = by_host(gather_facts(pool))
            elapsed = time.monotonic() - t0
    finally:
        subprocess.run(["iptables", "-D", *rule], check=True)
    assert not results[victim].ok
    assert results[victim].message == (f"unreachable: {lab_hosts.addresses[victim]}:{lab_hosts.port} did not answer within "
                                       f"{CONNECT_TIMEOUT:g}s (connect timed out)")
    assert results[victim].hint
    assert all(r.ok for h, r in results.items() if h != victim)
    assert CONNECT_TIMEOUT * 0.9 < elapsed < bound(), f"took {elapsed:.1f}s"


def test_hung_sshd_is_reported_not_waited_for(lab_pool, lab_hosts):
    victim = lab_hosts.names[0]
    lab.pause_host(lab_hosts.state_dir, victim)
    try:
        with with_ssh(lab_pool, connect_timeout=CONNECT_TIMEOUT) as pool:
            t0 = time.monotonic()
            results = by_host(pool.sh("hostname", "hung"))
            elapsed = time.monotonic() - t0
    finally:
        lab.pause_host(lab_hosts.state_dir, victim, paused=False)
    assert not results[victim].ok and "sent no SSH banner" in results[victim].message
    assert "hung or overloaded" in results[victim].hint
    assert all(r.ok for h, r in results.items() if h != victim)
    assert elapsed < bound(), f"took {elapsed:.1f}s"


def test_changed_host_key_is_refused_with_the_fix(lab_pool, lab_hosts):
    victim = lab_hosts.names[1]
    addr, port = lab_hosts.addresses[victim], lab_hosts.port
    known = lab_hosts.state_dir / "known_hosts"
    before = known.read_bytes()
    new_fp = lab.regenerate_host_key(lab_hosts.state_dir, victim)
    results = by_host(lab_pool.connect())
    msg = results[victim].message
    assert not results[victim].ok
    assert msg.startswith(f"Host key for {victim} ({addr}:{port}) has changed")
    assert f"the host offered ssh-ed25519 {new_fp}" in msg
    assert f"ssh-keygen -R {known_hosts_name(addr, port)} -f {known}" in msg
    assert f"ssh-keyscan -p {port} -t ed25519 {addr} >> {known}" in msg
    assert "pinned one" in results[victim].hint
    assert all(r.ok for h, r in results.items() if h != victim)
    assert known.read_bytes() == before  # never re-pinned behind the user's back


def test_unknown_host_is_refused_never_added(lab_pool, lab_hosts, tmp_path):
    victim = lab_hosts.names[2]
    addr = lab_hosts.addresses[victim]
    pinned = [ln for ln in (lab_hosts.state_dir / "known_hosts").read_text().splitlines()
              if not ln.startswith(known_hosts_name(addr, lab_hosts.port) + " ")]
    partial = tmp_path / "known_hosts"
    partial.write_text("\n".join(pinned) + "\n")
    digest = hashlib.sha256(partial.read_bytes()).hexdigest()
    with with_ssh(lab_pool, known_hosts=str(partial)) as pool:
        results = by_host(pool.connect())
    msg = results[victim].message
    assert not results[victim].ok and "not found in known_hosts" in msg
    assert "the host offered ssh-ed25519 SHA256:" in msg
    assert f"ssh-keyscan -p {lab_hosts.port} -t ed25519 {addr} >> {partial}" in msg
    assert "not pinned" in results[victim].hint
    assert all(r.ok for h, r in results.items() if h != victim)
    assert hashlib.sha256(partial.read_bytes()).hexdigest() == digest
    with with_ssh(lab_pool, known_hosts=str(tmp_path / "missing")) as pool:
        assert all(not r.ok and "(the file does not exist)" in r.message for r in pool.connect())


def test_system_known_hosts_do_not_count(lab_pool, lab_hosts, tmp_path, monkeypatch):
    # A key pinned only in the user's own ~/.ssh/known_hosts must not let a connection through.
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    shutil.copy(lab_hosts.state_dir / "known_hosts", home / ".ssh" / "known_hosts")
    monkeypatch.setenv("HOME", str(home))
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    with with_ssh(lab_pool, known_hosts=str(empty)) as pool:
        assert all(not r.ok and "not found in known_hosts" in r.message for r in pool.connect())


def test_relative_paths_start_at_the_params_folder(lab_hosts, tmp_path):
    import yaml

    data = yaml.safe_load(lab_hosts.params_path.read_text())
    shutil.copy(lab_hosts.state_dir / "known_hosts", tmp_path / "pinned")
    shutil.copy(lab_hosts.state_dir / "id_ed25519", tmp_path / "key")
    os.chmod(tmp_path / "key", 0o600)
    data["ssh"].update(known_hosts="pinned", key_file="key")
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(data))
    with HostPool.from_file(tmp_path / "site.yaml") as pool:
        assert all(r.ok for r in pool.connect())


def test_facts_on_the_lab_hosts(lab_pool, lab_hosts):
    t0 = time.monotonic()
    results = gather_facts(lab_pool)
    assert time.monotonic() - t0 < 30
    assert all(r.ok for r in results), [r.message for r in results]
    for r in results:
        f = r.data
        assert f["hostname"] == r.host and f["os_family"] == "debian" and f["os_id"] == "debian"
        assert f["pid1"] == "sshd" and not f["has_systemd"]  # sshd is PID 1 of the host's PID namespace
        assert f["gpu_count"] == 0 and f["nvidia_smi"] is None
        assert f["cpus"] >= 1 and f["mem_gib"] > 0 and f["kernel"] == os.uname().release
        assert any(x["mount"] == "/" for x in f["filesystems"])
    table = facts_table(results)
    assert list(table.frame["host"]) == lab_hosts.names and set(table.frame["status"]) == {"ok"}
