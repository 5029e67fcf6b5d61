"""Real-node lab hosts (``mlplat lab up --nodes real``) without a cluster: each host in its own
network namespace on the lab bridge, its own cgroup root, the init with its systemctl/journalctl
shims (enable, start, restart, stop, status, restart after a crash), a clean ``down`` (the listing
of what could outlive the lab is empty before and after), machine-wide sysctls restored, and bad
input refused before anything is made.

A lab of its own (own state directory, own /24), so it can run beside the lab of the main job.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from mlplat.lab import hosts, realnodes

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("nsenter") is None,
                                reason="needs root, iproute2 and util-linux (network namespaces)")

UNIT = """[Unit]
Description=lab test service
[Service]
Environment="WHO=world"
EnvironmentFile=-/etc/default/labtest
ExecStart=/bin/sh -c 'echo hello $WHO $EXTRA; exec sleep 1000'
Restart=always
RestartSec=1
[Install]
WantedBy=multi-user.target
"""


def _network() -> str:
    return f"10.213.{100 + os.getpid() % 100}"


@pytest.fixture(scope="module")
def real_lab(tmp_path_factory):
    state = tmp_path_factory.mktemp("real-lab")
    before = realnodes.read_sysctls()
    hosts.up(state, 2, nodes="real", network=_network())
    yield state
    hosts.down(state)
    assert realnodes.read_sysctls() == before


def _ssh(state: Path, index: int, command: str, check: bool = True) -> subprocess.CompletedProcess:
    addr = realnodes.address(_network(), index)
    r = subprocess.run(["ssh", "-i", str(state / "id_ed25519"), "-o", f"UserKnownHostsFile={state / 'known_hosts'}",
                        "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", f"root@{addr}", command],
                       capture_output=True, text=True, timeout=60)
    if check:
        assert r.returncode == 0, (command, r.stdout, r.stderr)
    return r


def test_each_host_has_its_own_namespace_address_and_cgroup_root(real_lab):
    lid = realnodes.lab_id(real_lab)
    one = _ssh(real_lab, 1, "hostname; cat /proc/1/comm; ip -4 -o addr show eth0; ip route show default; "
                           "readlink /proc/self/ns/net; grep -E ':(cpu|memory):' /proc/self/cgroup; "
                           "sysctl -n net.ipv4.ip_forward; findmnt -n -o FSTYPE /var/lib/containerd").stdout.split("\n")
    two = _ssh(real_lab, 2, "readlink /proc/self/ns/net").stdout.strip()
    assert one[0] == "lab-1" and one[1] == "mlplat-init"
    assert f"{realnodes.address(_network(), 1)}/24" in one[2]
    assert f"via {_network()}.{realnodes.GATEWAY_ADDRESS}" in one[3]
    assert one[4] != two and one[4] != os.readlink("/proc/self/ns/net")
    assert sorted(x.split(":", 1)[1] for x in one[5:7]) == ["cpu:/", "memory:/"]  # its own cgroup namespace root
    assert one[7] == "1"
    assert one[8] not in ("overlay", "tmpfs")  # a real file system for containerd's snapshots
    assert all(d.is_dir() for d in realnodes.cgroup_dirs(lid, "lab-1"))
    # The hosts reach each other over the bridge; the gateway forwards nothing off the machine.
    _ssh(real_lab, 1, f"exec 3<>/dev/tcp/{realnodes.address(_network(), 2)}/22 && head -c 4 <&3")
    out = _ssh(real_lab, 1, "ip netns list 2>/dev/null; ip route get 192.0.2.77", check=False)
    assert f"via {_network()}.{realnodes.GATEWAY_ADDRESS}" in out.stdout
    assert _ssh(real_lab, 1, "cat /proc/sys/net/ipv4/ip_forward", check=False).stdout.strip() == "1"
    gw_forward = subprocess.run(["ip", "netns", "exec", realnodes.core_ns(lid), "sysctl", "-n", "net.ipv4.ip_forward"],
                                capture_output=True, text=True).stdout.strip()
    assert gw_forward == "0"


def test_systemctl_shim_runs_units_like_systemd(real_lab):
    _ssh(real_lab, 1, "mkdir -p /usr/lib/systemd/system && cat > /usr/lib/systemd/system/labtest.service <<'EOF'\n"
                      + UNIT + "EOF\necho 'EXTRA=from-env-file' > /etc/default/labtest")
    r = _ssh(real_lab, 1, "systemctl is-enabled labtest", check=False)
    assert r.returncode != 0 and r.stdout.strip() == "disabled"
    _ssh(real_lab, 1, "systemctl daemon-reload && systemctl enable --now labtest")
    assert _ssh(real_lab, 1, "systemctl is-active labtest").stdout.strip() == "active"
    assert _ssh(real_lab, 1, "systemctl is-enabled labtest").stdout.strip() == "enabled"
    status = _ssh(real_lab, 1, "systemctl status labtest").stdout
    assert "Loaded: loaded (/usr/lib/systemd/system/labtest.service; enabled)" in status and "Main PID:" in status
    pid = int(status.split("Main PID:")[1].split()[0])
    # Restart=always: the init starts it again after a crash, with a new pid.
    _ssh(real_lab, 1, f"kill -9 {pid}")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        new = _ssh(real_lab, 1, "systemctl status labtest", check=False).stdout
        if "Main PID:" in new and int(new.split("Main PID:")[1].split()[0]) != pid:
            break
        time.sleep(0.5)
    else:
        pytest.fail("the init did not restart the killed service")
    _ssh(real_lab, 1, "systemctl restart labtest")
    logs = _ssh(real_lab, 1, "journalctl -u labtest --no-pager -n 50").stdout
    assert logs.count("hello world from-env-file") >= 3  # the first start, after the kill, after restart
    _ssh(real_lab, 1, "systemctl disable --now labtest")
    r = _ssh(real_lab, 1, "systemctl is-active labtest", check=False)
    assert r.returncode == 3 and r.stdout.strip() == "inactive"
    # The other host saw none of it: its /usr and /etc are its own.
    assert _ssh(real_lab, 2, "systemctl status labtest", check=False).returncode == 4
    # A unit that does not exist is refused the way systemd refuses it.
    r = _ssh(real_lab, 1, "systemctl start no-such-unit", check=False)
    assert r.returncode == 5 and "not found" in r.stderr


def test_down_leaves_nothing_and_restores_machine_sysctls(tmp_path):
    state = tmp_path / "lab"
    net = f"10.213.{200 + os.getpid() % 50}"
    lid = realnodes.lab_id(state)
    assert not any(realnodes.leftovers(state).values())
    before = realnodes.read_sysctls()
    hosts.up(state, 1, nodes="real", network=net)
    try:
        listing = realnodes.leftovers(state)
        assert listing["netns"] == [realnodes.core_ns(lid), realnodes.host_ns(lid, "lab-1")]
        assert listing["links"] == [realnodes.machine_link(lid)] and listing["cgroups"]
        # What the kubelet does at start: a machine-wide sysctl changed from inside a host.
        key = "vm.overcommit_memory"
        was = before[key]
        new = "1" if was != "1" else "0"
        addr = realnodes.address(net, 1)
        subprocess.run(["ssh", "-i", str(state / "id_ed25519"), "-o", f"UserKnownHostsFile={state / 'known_hosts'}",
                        "-o", "BatchMode=yes", f"root@{addr}", f"sysctl -qw {key}={new}"], check=True, timeout=30)
        assert realnodes.read_sysctls()[key] == new
        # A second `up` keeps what runs and does not record the changed value as the original.
        hosts.up(state, 1, nodes="real", network=net)
    finally:
        hosts.down(state)
    assert realnodes.read_sysctls() == before
    assert not any(realnodes.leftovers(state, before).values())
    assert hosts.lab_processes(state) == [] and hosts.lab_mounts(state) == []


@pytest.mark.parametrize("network, needle", [("127.0.10", "private"), ("10.96.3", "service CIDR"),
                                             ("10.244.9", "pod CIDR"), ("10.213", "three octets")])
def test_bad_network_is_refused_before_anything_is_made(tmp_path, network, needle):
    state = tmp_path / "lab"
    with pytest.raises(hosts.LabError, match=needle):
        hosts.up(state, 1, nodes="real", network=network)
    assert not any(realnodes.leftovers(state).values())


def test_a_lab_keeps_its_flavour(real_lab):
    with pytest.raises(hosts.LabError, match="down --purge"):
        hosts.up(real_lab, nodes="kwok")
