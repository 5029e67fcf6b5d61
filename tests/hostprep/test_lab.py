"""Phases 10 and 20 for real on the lab's SSH hosts (Debian 12, each with its own overlays).

- plan mode changes nothing: every host's overlay upper directory is byte-identical before and after;
- apply with one host stopped halfway (during the package installs): the others finish, the verdict
  names the stopped one; after `lab up` a rerun converges;
- the files (apt sources, sysctl, modules-load, fstab, containerd config and the NVIDIA drop-in) and
  the packages (containerd, runc, kmod...) are checked over SSH afterwards, and
  ``containerd config dump`` shows the NVIDIA runtime as the default;
- a second apply of each phase changes nothing; the machine's own /etc is untouched.

The lab params get what a lab needs: the distribution's containerd (Docker's repository is not
reachable here), the NVIDIA runtime on every host (the lab hosts have no GPUs), an apt mirror (the
Debian archive the machine uses), so that those paths run for real.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

import pytest
import yaml

from mlplat.report import PhaseFailed

pytestmark = [pytest.mark.lab_hosts, pytest.mark.slow]

SYSCTLS = ["net/ipv4/ip_forward", "net/bridge/bridge-nf-call-iptables", "net/bridge/bridge-nf-call-ip6tables"]
# What phases 10 and 20 write on a host: on the machine itself none of it may appear or change.
MACHINE_PATHS = ["/etc/apt/sources.list.d/debian.sources", "/etc/apt/sources.list", "/etc/fstab",
                 "/etc/sysctl.d/99-kubernetes.conf", "/etc/modules-load.d/k8s.conf", "/etc/containerd/config.toml",
                 "/etc/containerd/conf.d/99-nvidia.toml", "/usr/bin/containerd", "/var/lib/mlplat"]
SWAP_LINE = "/swapfile none swap sw 0 0"


def _machine_mirror() -> str:
    """The Debian archive this machine already uses (the lab hosts reach no other)."""
    text = Path("/etc/apt/sources.list.d/debian.sources").read_text() if \
        Path("/etc/apt/sources.list.d/debian.sources").exists() else Path("/etc/apt/sources.list").read_text()
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("URIs:"):
            return line.split()[1]
        if line.startswith("deb ") and "debian" in line and "security" not in line:
            return line.split()[1]
    pytest.skip("cannot tell which Debian archive this machine uses")



def _machine_state() -> dict:
    out = {}
    for p in MACHINE_PATHS:
        path = Path(p)
        out[p] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else path.exists()
    return out


def _layers(state_dir: Path) -> Path:
    p = state_dir / "lab-hosts.json"
    rec = json.loads(p.read_text()).get("layers") if p.is_file() else None
    return Path(rec) if rec else state_dir / "hosts"


def _upper_snapshot(state_dir: Path, names: list[str]) -> dict[str, str]:
    """Path -> kind, mode, owner, size and content hash of everything in each host's upper dirs."""
    snap = {}
    for name in names:
        top = _layers(state_dir) / name / "upper"
        for p in sorted(top.rglob("*")):
            st = p.lstat()
            if p.is_symlink():
                what = "link:" + os.readlink(p)
            elif p.is_file():
                what = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                what = "dir" if p.is_dir() else "other"
            snap[str(p.relative_to(top.parent.parent))] = f"{st.st_mode:o} {st.st_uid}:{st.st_gid} {st.st_size} {what}"
    return snap


@pytest.fixture(scope="module")
def lab(lab_hosts, tmp_path_factory):
    """The session lab with this module's params. Lab hosts share the machine's kernel, but their
    /proc/sys is read-only and they cannot load modules: the machine's live sysctls must come out
    of the phases unchanged (checked at the end; restored regardless, so a failure leaks nothing)."""
    lab_hosts.ensure_up()
    d = yaml.safe_load(Path(lab_hosts.params_path).read_text())
    d["mirrors"] = {"apt": _machine_mirror()}
    d["gpu_runtime"] = {"containerd_source": "distro", "nvidia_runtime_default": "all-hosts"}
    params = tmp_path_factory.mktemp("hostprep") / "params.yaml"
    params.write_text(yaml.safe_dump(d))
    saved = {k: Path("/proc/sys", k).read_text() for k in SYSCTLS if Path("/proc/sys", k).exists()}
    lab_hosts.hostprep_params = params
    lab_hosts.machine_before = _machine_state()
    try:
        yield lab_hosts
        after = {k: Path("/proc/sys", k).read_text() for k in saved}
        assert after == saved, "a lab host changed the machine's own sysctls"
    finally:
        for k, v in saved.items():
            Path("/proc/sys", k).write_text(v)


def run_phase(module, params: Path, mode: str, run_dir: Path, during=None):
    """Run a phase module's steps in order, as its notebook does; returns (verdict, error or None).
    `during(step_name)` is called in a thread as each step starts (to break a host halfway)."""
    module.setup(params_file=str(params), mode=mode, run_dir=str(run_dir))
    module.facts()
    for step in module.STEPS:
        if during is not None:
            during(step.__name__)
        step()
    err = None
    try:
        module.finish()
    except PhaseFailed as e:
        err = e
    v = json.loads((run_dir / f"verdict-{module.NUMBER}_{module.NAME}.json").read_text())
    return v, err


def _ssh(lab, command: str) -> dict[str, str]:
    from mlplat.hosts import HostPool

    with HostPool.from_file(lab.hostprep_params) as pool:
        res = pool.sh(command, step="check", check=False)
    return {r.host: r.data.get("stdout", "") + r.data.get("stderr", "") for r in res}


def test_plan_mode_changes_nothing(lab, tmp_path):
    from mlplat.phases import gpu_runtime, host_prep

    before = _upper_snapshot(lab.state_dir, lab.names)
    v10, e10 = run_phase(host_prep, lab.hostprep_params, "plan", tmp_path)
    v20, e20 = run_phase(gpu_runtime, lab.hostprep_params, "plan", tmp_path)
    after = _upper_snapshot(lab.state_dir, lab.names)
    assert e10 is None and e20 is None, (e10, e20)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert changed == [], changed
    assert v10["mode"] == v20["mode"] == "plan"


@pytest.fixture(scope="module")
def applied(lab, tmp_path_factory):
    """Apply 10 with the last host stopped during its package install, `up`, rerun 10, apply 20,
    then apply both again: every verdict and timing, for the tests below."""
    from mlplat.lab import hosts as lab_hosts_mod
    from mlplat.phases import gpu_runtime, host_prep

    out = {}
    victim = lab.names[-1]
    first = lab.names[0]
    _ssh(lab, f"grep -q '^{SWAP_LINE}$' /etc/fstab || echo '{SWAP_LINE}' >> /etc/fstab")  # a server with swap
    # Earlier modules of the session may have installed the base packages on the session's hosts
    # already; without socat the victim's package step has real work (a download and dpkg) to stop.
    _ssh(lab, "dpkg -r socat >/dev/null 2>&1; dpkg-query -W -f='${db:Status-Status}' socat 2>/dev/null || true")
    killer = {"go": threading.Event()}

    def stop_victim(how: str):
        lab_hosts_mod.stop_host(lab.state_dir, victim)
        killer["at"], killer["how"] = time.monotonic(), how

    def watch():
        """Stop the victim as soon as apt-get or dpkg runs there (the package install halfway), or,
        when that was over before it was seen, as the next step starts (`go`): either way the victim
        stops before its swap, modules and sysctl steps, so a rerun has work on it for certain."""
        from mlplat.hosts import HostPool

        with HostPool.from_file(lab.hostprep_params) as pool:
            while not killer["go"].is_set():
                res = pool.sh("pgrep -x 'apt-get|dpkg|http' || true", step="check", check=False, hosts=[victim])
                if any(r.data.get("stdout", "").strip() for r in res):
                    return stop_victim("while apt-get/dpkg ran")
                killer["go"].wait(0.05)
        stop_victim("before the step after the package install")

    def during(step_name):
        if step_name == "base_packages":
            killer["thread"] = threading.Thread(target=watch)
            killer["thread"].start()
        elif "thread" in killer and killer["thread"].is_alive():
            killer["go"].set()
            killer["thread"].join()

    t0 = time.monotonic()
    out["killed"] = run_phase(host_prep, lab.hostprep_params, "apply", tmp_path_factory.mktemp("run1"), during)
    out["killed_s"] = time.monotonic() - t0
    killer["thread"].join()
    out["killed_how"] = killer["how"]
    lab.ensure_up()  # `lab up`: the stopped host starts again, its files as it left them
    t0 = time.monotonic()
    out["rerun10"] = run_phase(host_prep, lab.hostprep_params, "apply", tmp_path_factory.mktemp("run2"))
    out["rerun10_s"] = time.monotonic() - t0
    t0 = time.monotonic()
    out["apply20"] = run_phase(gpu_runtime, lab.hostprep_params, "apply", tmp_path_factory.mktemp("run3"))
    out["apply20_s"] = time.monotonic() - t0
    out["again10"] = run_phase(host_prep, lab.hostprep_params, "apply", tmp_path_factory.mktemp("run4"))
    out["again20"] = run_phase(gpu_runtime, lab.hostprep_params, "apply", tmp_path_factory.mktemp("run5"))
    out["victim"], out["first"] = victim, first
    return out


def test_host_stopped_halfway_is_named_and_others_finish(applied):
    v, err = applied["killed"]
    victim = applied["victim"]
    assert err is not None and not v["ok"]
    print(f"{victim} stopped {applied['killed_how']}")
    print("\n".join(f"{f['host']}: {f['step']}: {f['message'][:160]}" for f in v["failures"]))
    assert {f["host"] for f in v["failures"]} == {victim}, v["failures"]
    assert victim in str(err)
    for host, counts in v["hosts"].items():
        if host != victim:
            assert counts["failed"] == 0 and counts["changed"] > 0, (host, counts)
    # later steps did not wait on it again and again: one connect timeout, not one per step
    assert any("unreachable since" in f["message"] for f in v["failures"]), v["failures"]


def test_rerun_after_lab_up_converges(applied):
    v, err = applied["rerun10"]
    assert err is None and v["ok"], v["failures"]
    assert v["hosts"][applied["victim"]]["changed"] > 0  # the stopped host catches up
    v, err = applied["apply20"]
    assert err is None and v["ok"], v["failures"]


def test_second_apply_changes_nothing(applied):
    for key in ("again10", "again20"):
        v, err = applied[key]
        assert err is None and v["ok"], (key, v["failures"])
        assert v["counts"]["changed"] == 0, (key, v["counts"], v["hosts"])


def test_files_and_packages_over_ssh(lab, applied):
    out = _ssh(lab, "cat /etc/apt/sources.list.d/debian.sources; echo @@; cat /etc/sysctl.d/99-kubernetes.conf; "
                    "echo @@; cat /etc/modules-load.d/k8s.conf; echo @@; cat /etc/fstab; echo @@; "
                    "cat /etc/containerd/config.toml; echo @@; cat /etc/containerd/conf.d/99-nvidia.toml; echo @@; "
                    "dpkg-query -W -f='${Package} ${Version} ${db:Status-Status}\\n' containerd runc kmod conntrack; "
                    "echo @@; containerd config dump")
    for host, text in out.items():
        sources, sysctl, modules, fstab, config, dropin, pkgs, dump = text.split("@@\n")
        assert f"URIs: {_machine_mirror()}\nSuites: bookworm bookworm-updates\n" in sources, host
        assert "net.ipv4.ip_forward = 1" in sysctl and "net.bridge.bridge-nf-call-iptables = 1" in sysctl
        assert modules.splitlines()[1:] == ["overlay", "br_netfilter"]
        if host == applied["first"]:
            assert f"#mlplat-swapoff# {SWAP_LINE}" in fstab.splitlines(), fstab
        assert 'sandbox_image = "registry.k8s.io/pause:3.10.1"' in config and 'imports = ["/etc/containerd/conf.d/*.toml"]' in config
        assert 'default_runtime_name = "nvidia"' in dropin
        assert "containerd 1.6.20" in pkgs and " installed" in pkgs and "runc " in pkgs and "conntrack " in pkgs, pkgs
        assert 'default_runtime_name = "nvidia"' in dump and 'BinaryName = "/usr/bin/nvidia-container-runtime"' in dump


def test_machine_untouched(lab, applied):
    assert _machine_state() == lab.machine_before
