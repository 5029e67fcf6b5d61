"""Phases 30 and 99 on the lab's SSH hosts as the real-node lab configures them (``lab.nodes:
real``, ``lab.binaries_dir``, bridge CNI, cgroup v1 allowed), as far as hosts without a cluster go:
the packages step copies the lab's binaries and a rerun changes nothing; teardown removes them and
a rerun finds nothing; the config step reads each host's cgroup version; the bridge CNI step checks
the plugins and, with no cluster yet, says what it would write; the network checks say why not.

The "lab-built binaries" here are small scripts that print v1.34.4, written into each host's own
/opt (a copy-on-write overlay): nothing of the machine is touched.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import yaml

from mlplat.cluster import packages as pk
from mlplat.phases import kubernetes as p30, teardown as p99

pytestmark = pytest.mark.lab_hosts

FAKE = {"kubeadm": '[ "$1 $2 $3" = "version -o short" ] && echo v1.34.4',
        "kubelet": '[ "$1" = --version ] && echo "Kubernetes v1.34.4"',
        "kubectl": '[ "$1 $2" = "version --client" ] && echo "Client Version: v1.34.4"'}


@pytest.fixture
def real_params(lab_hosts, lab_pool, tmp_path):
    tag = uuid.uuid4().hex[:6]
    bindir = f"/opt/mlplat-test-bin-{tag}"
    script = f"mkdir -p {bindir} && " + " && ".join(
        f"printf '%s\\n' '#!/bin/sh' {_q(body)} > {bindir}/{name} && chmod 755 {bindir}/{name}"
        for name, body in FAKE.items())
    assert all(r.ok for r in lab_pool.sh(script, step="fake binaries")), "could not write the fake binaries"
    data = yaml.safe_load(lab_hosts.params_path.read_text())
    data["site"] = f"real-lab-{tag}"
    data["os"] = {"family": "debian", "distro": "debian", "version": "12"}
    data["kubernetes"] = {"cni": "bridge", "allow_cgroup_v1": True, "cgroup_driver": "cgroupfs",
                          "kubelet_config": {"imageGCHighThresholdPercent": 100},
                          "kube_proxy_config": {"conntrack": {"maxPerCore": 0}}}
    data["lab"] = {"state_dir": str(lab_hosts.state_dir), "nodes": "real", "binaries_dir": bindir}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    yield path
    # The copies phase 30 made go first: they are recognised by comparing them with the fakes.
    lab_pool.sh(f"for b in kubeadm kubelet kubectl; do cmp -s /usr/bin/$b {bindir}/$b 2>/dev/null && "
                f"rm -f /usr/bin/$b; done; rm -rf {bindir} /etc/cni /opt/cni; "
                f"rm -f {pk.KUBELET_UNIT} {pk.KUBEADM_DROPIN}; true", step="cleanup", check=False)
    left = lab_pool.sh("for b in kubeadm kubelet kubectl; do [ -e /usr/bin/$b ] && echo $b; done; true",
                       step="cleanup check", check=False)
    assert not any((r.data.get("stdout") or "").strip() for r in left), "a fake binary was left on a lab host"


def _q(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def _rows(module, step):
    return module._ctx().phase.steps[step]


def test_packages_copy_then_nothing_then_teardown_removes_them(real_params):
    p30.setup(params_file=str(real_params), mode="plan")
    p30.packages()
    plan = _rows(p30, "packages")
    assert all(r.ok and r.changed and "would copy the lab-built v1.34.4 kubeadm, kubelet, kubectl" in r.message
               and pk.KUBELET_UNIT in r.message for r in plan), [r.message for r in plan]
    p30.setup(params_file=str(real_params), mode="apply")
    p30.packages()
    first = _rows(p30, "packages")
    assert all(r.ok and r.changed and r.message.startswith("lab: no package repository; copied the lab-built v1.34.4")
               for r in first), [r.message for r in first]
    p30.packages()
    again = _rows(p30, "packages")
    assert all(r.ok and not r.changed and r.message.startswith("unchanged: lab: no package repository") for r in again)

    p99.setup(params_file=str(real_params), mode="apply", confirm=True)
    p99.packages()
    gone = _rows(p99, "packages")
    assert all(r.ok and r.changed and r.message.startswith("lab: removed what phase 30 copied (/usr/bin/kubeadm")
               for r in gone), [r.message for r in gone]
    p99.packages()
    assert all(r.ok and not r.changed for r in _rows(p99, "packages"))
    p30.setup(params_file=str(real_params), mode="plan")
    p30.packages()
    assert all(r.changed for r in _rows(p30, "packages")), "after teardown, 30 would copy again"


def test_config_reads_cgroups_and_bridge_plan_without_a_cluster(real_params, lab_pool):
    p30.setup(params_file=str(real_params), mode="plan")
    p30.config()
    rows = _rows(p30, "config")
    assert any("SystemVerification ignored" in r.message for r in rows)
    cg = [r for r in rows if r.step == "kubeadm | cgroup version"]
    assert len(cg) == len(lab_pool.hosts) and all(r.ok for r in cg)
    assert all(r.message in ("cgroup v1: allowed (kubernetes.allow_cgroup_v1)",
                             "cgroup v2 (kubernetes.allow_cgroup_v1 is set, not needed here)") for r in cg)
    p30.cni()
    plugins = [r for r in _rows(p30, "cni") if r.step == "cni | plugins"]
    if Path("/usr/lib/cni/bridge").exists():  # Debian's containernetworking-plugins (lab/bootstrap.sh)
        assert plugins and all(r.ok and r.changed and "would link the distribution's plugins (/usr/lib/cni) into "
                               "/opt/cni/bin" in r.message for r in plugins), [r.message for r in plugins]
    else:
        assert plugins and all(not r.ok and "CNI plugins missing in /opt/cni/bin" in r.message for r in plugins)
    lab_pool.sh("mkdir -p /opt/cni/bin && for p in bridge host-local portmap loopback; do "
                "ln -sf /usr/lib/cni/$p /opt/cni/bin/$p; done", step="plugins")
    p30.cni()
    rows = _rows(p30, "cni")
    assert all(r.ok for r in rows), [r.message for r in rows]
    assert [r.message for r in rows if r.step == "cni | bridge"][0].startswith(
        "would write /etc/cni/net.d/10-mlplat-bridge.conflist")
    p30.network()
    assert all(r.skipped and "no cluster yet" in r.message for r in _rows(p30, "network"))
    p30.device_plugin()
    assert [r.message for r in _rows(p30, "device_plugin")] == [
        "skipped: no host is expected to have GPUs (hosts[].gpus are all 0): the device plugin would only "
        "crash-loop on these nodes"]


def test_flannel_plan_checks_the_cni_plugins_not_yet_before_packages(real_params, lab_pool, monkeypatch):
    """flannel's CNI plugin needs the standard plugins: a host without them fails by name, except in a
    plan whose packages step would install them first."""
    data = yaml.safe_load(real_params.read_text())
    data["kubernetes"]["cni"] = "flannel"
    real_params.write_text(yaml.safe_dump(data, sort_keys=False))
    # Hosts with the plugins neither in /opt/cni/bin nor in the distribution's folder.
    monkeypatch.setattr(p30.bridge, "plugin_check", lambda: "echo 'missing bridge'; echo 'missing host-local'")
    p30.setup(params_file=str(real_params), mode="plan")
    p30.packages()
    assert all(r.changed for r in _rows(p30, "packages"))
    p30.cni()
    plugins = [r for r in _rows(p30, "cni") if r.step == "cni | plugins"]
    assert len(plugins) == len(lab_pool.hosts)
    assert all(r.ok and r.skipped and r.message.startswith("not yet: CNI plugins missing in /opt/cni/bin: bridge, "
                                                           "host-local") and "this plan changes packages first"
               in r.message for r in plugins), [r.message for r in plugins]
    # Once the packages are in place, missing plugins fail, naming each host.
    p30.setup(params_file=str(real_params), mode="apply")
    p30.packages()
    p30.setup(params_file=str(real_params), mode="plan")
    p30.packages()
    assert not any(r.changed for r in _rows(p30, "packages"))
    p30.cni()
    plugins = [r for r in _rows(p30, "cni") if r.step == "cni | plugins"]
    assert sorted(r.host for r in plugins if not r.ok) == sorted(h.name for h in lab_pool.hosts)
    assert all("containernetworking-plugins" in r.message for r in plugins), [r.message for r in plugins]


def test_init_stopped_halfway_is_not_reused(real_params, lab_pool, monkeypatch):
    """kubeadm writes admin.conf before it waits for the control plane, so an init that failed at that
    wait leaves it behind. A rerun must not take that host for a running control plane: the init row
    fails, naming the host and the way out (here admin.conf names an API server nobody serves)."""
    from mlplat.cluster import kubeadm
    from mlplat.params import load_params

    monkeypatch.setattr(p30, "REUSE_PAUSE", 0.2)
    cp = kubeadm.first_control_plane(load_params(real_params)).name
    conf = ("apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n"
            "users: [{name: u, user: {}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\n"
            "current-context: x\n")
    made = lab_pool.sh(f"test -e /etc/kubernetes && echo existed; mkdir -p /etc/kubernetes && "
                       f"printf '%s' {_q(conf)} > {kubeadm.ADMIN_CONF}", step="half init", hosts=[cp])
    assert made[0].ok and "existed" not in made[0].data["stdout"], "the lab host had /etc/kubernetes already"
    try:
        p30.setup(params_file=str(real_params), mode="apply")
        p30.packages()  # the stand-in kubectl, which answers only `version --client`
        p30.init()
        [row] = [r for r in _rows(p30, "init") if r.host == cp]
        assert not row.ok and not row.changed, row.message
        assert row.message.startswith(f"{kubeadm.ADMIN_CONF} exists on {cp} but its API server does not answer")
        assert "99_teardown" in row.message and "kubeadm init that stopped halfway" in row.message
    finally:
        lab_pool.sh("rm -rf /etc/kubernetes", step="cleanup", hosts=[cp], check=False)
