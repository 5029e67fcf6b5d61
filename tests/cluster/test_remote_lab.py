"""Host plans (mlplat.cluster.remote) on the lab's real SSH hosts: probe, plan-mode diff, idempotent
apply, captured output kept out of the results, stop at the first failing command; and the
package and reset probes of phases 30 and 99 on a fresh Debian host."""

from __future__ import annotations

import base64
import shutil
import uuid

import pytest

from mlplat.cluster import inventory, packages as pk
from mlplat.cluster.kubeadm import HostStep, PlanFile
from mlplat.cluster.remote import run_steps
from mlplat.hosts import HostPool
from mlplat.params import Params, load_params

pytestmark = pytest.mark.lab_hosts


def _step(host, tag, content, commands=None):
    return HostStep(host=host, step="test | plan", why="a test", probe=f"test -f /etc/mlplat/done-{tag}",
                    probe_means="already done", files=[PlanFile(f"/etc/mlplat/test-{tag}.yaml", content, secret=True)],
                    commands=commands if commands is not None else [f"touch /etc/mlplat/done-{tag}"])


def test_plan_then_apply_then_nothing(lab_pool):
    tag = uuid.uuid4().hex[:6]
    hosts = [h.name for h in lab_pool.hosts]
    steps = [_step(h, tag, f"token: abcdef.0123456789abcdef\nhost: {h}\n") for h in hosts]
    plan = run_steps(lab_pool, steps, apply=False, step="test | plan")
    assert all(r.ok and r.changed and r.message.startswith("would write") for r in plan)
    assert all("abcdef.****************" in r.diff and "0123456789abcdef" not in r.diff for r in plan)
    assert all(r.data["probe_exit"] != 0 for r in plan)
    first = run_steps(lab_pool, steps, apply=True, step="test | plan")
    assert all(r.ok and r.changed for r in first), [r.message for r in first]
    again = run_steps(lab_pool, steps, apply=True, step="test | plan")
    assert all(r.ok and not r.changed and r.message == "unchanged: already done" for r in again)
    mode = lab_pool.sh(f"stat -c %a /etc/mlplat/test-{tag}.yaml", step="stat")
    assert all(r.data["stdout"].strip() == "600" for r in mode)
    lab_pool.sh(f"rm -f /etc/mlplat/test-{tag}.yaml /etc/mlplat/done-{tag}", step="cleanup")


@pytest.mark.skipif(shutil.which("sudo") is None, reason="sudo is not installed on this machine (apt-get install sudo)")
def test_a_secret_file_stays_off_the_command_line_with_a_sudo_password(lab_pool, lab_hosts, monkeypatch):
    """A join config (token, certificate key) written by a user whose sudo asks for a password: the
    content must not ride on a command line, which sudo logs. sudo's own log on the host shows what
    ran; the file arrives whole, 0600, and no staged copy is left in the user's home."""
    host = lab_hosts.names[0]
    user, password = "mlw" + uuid.uuid4().hex[:6], "pw-" + uuid.uuid4().hex
    secret = f"token: abcdef.{uuid.uuid4().hex[:16]}\ncertificateKey: {uuid.uuid4().hex * 2}\n"
    log, path = f"/var/log/sudo-{user}.log", f"/etc/mlplat-{user}/join.yaml"
    setup = (f"useradd -m -d /opt/{user} -s /bin/sh {user} && echo '{user}:{password}' | chpasswd && "
             f"printf '%s\\n' 'Defaults:{user} logfile={log}' '{user} ALL=(ALL) ALL' > /etc/sudoers.d/{user} && "
             f"chmod 0440 /etc/sudoers.d/{user}")
    assert lab_pool.sh(setup, "create sudoer", hosts=[host])[0].ok
    var = "MLPLAT_TEST_SUDO_" + uuid.uuid4().hex[:6].upper()
    monkeypatch.setenv(var, password)
    data = lab_pool.params.model_dump(exclude_none=True)
    data["ssh"].update(user=user, sudo_password={"env": var})
    try:
        with HostPool(Params.model_validate(data), base_dir=lab_pool.base_dir) as pool:
            step = HostStep(host=host, step="test | secret", why="x", files=[PlanFile(path, secret, secret=True)])
            [r] = run_steps(pool, [step], apply=True, step="test | secret")
            assert r.ok and r.changed, r.message
        out = lab_pool.sh(f"cat {path}; echo @@; stat -c %a {path}; stat -c %a $(dirname {path}); echo @@; "
                          f"ls -A /opt/{user}; echo @@; cat {log}", "check", hosts=[host])[0].data["stdout"]
        content, modes, home, sudo_log = out.split("@@\n")
        assert content == secret, content
        assert modes.split() == ["600", "755"]
        assert ".mlplat-upload" not in home, home
        assert "COMMAND=" in sudo_log  # sudo did log what it ran
        b64 = base64.b64encode(secret.encode()).decode()
        assert "abcdef." not in sudo_log and b64[:40] not in sudo_log, sudo_log
    finally:
        lab_pool.sh(f"userdel -r {user} 2>/dev/null; rm -rf /etc/sudoers.d/{user} {log} /opt/{user} "
                    f"$(dirname {path}); true", "cleanup", hosts=[host], check=False)


def test_capture_stays_in_memory_and_failure_stops_the_host(lab_pool):
    tag = uuid.uuid4().hex[:6]
    h = lab_pool.hosts[0].name
    captured: dict = {}
    cap = HostStep(host=h, step="test | capture", why="x", commands=["echo secret-abcdef.0123456789abcdef"],
                   capture="join")
    bad = HostStep(host=h, step="test | fail", why="x", commands=["false", f"touch /tmp/never-{tag}"])
    after = HostStep(host=h, step="test | after", why="x", commands=["true"])
    res = run_steps(lab_pool, [cap, bad, after], apply=True, step="test", captured=captured)
    assert captured["join"].strip() == "secret-abcdef.0123456789abcdef"
    assert "output" not in res[0].data and "abcdef.0123456789abcdef" not in repr(res[0])
    assert [r.ok for r in res] == [True, False] and res[1].message.startswith("false: exit 1")
    assert lab_pool.sh(f"test -e /tmp/never-{tag}", step="x", check=False)[0].data["exit"] == 1


def test_package_and_reset_probes_on_a_fresh_debian_host(lab_pool, lab_hosts):
    params = load_params(lab_hosts.params_path)
    params.os.family, params.os.distro, params.os.version = "debian", "debian", "12"
    h = params.hosts[0]
    [r] = run_steps(lab_pool, [pk.install_step(params, h)], apply=False, step="packages")
    got = pk.missing(params, pk.parse_probe(r.data["probe"]))
    # The lab host is a copy of this machine, which may carry some other kubectl package.
    assert got[:2] == ["kubelet (not installed)", "kubeadm (not installed)"] and got[2].startswith("kubectl (")
    assert r.changed and "would write /etc/apt/sources.list.d/kubernetes.list" in r.message
    reset = HostStep(host=h.name, step="kubeadm | reset", why="x",
                     probe=f"out=$({inventory.HOST_PROBE}); echo \"$out\"; [ -z \"$out\" ]",
                     probe_means="nothing to reset", commands=inventory.reset_commands())
    [r] = run_steps(lab_pool, [reset], apply=False, step="reset")
    assert r.ok and not r.changed and r.message == "unchanged: nothing to reset", r.data
