"""Phase 30 and 99 for real nodes (the real-node lab, or servers): the new params and their
validation, the kubeadm config they render (checked by the real kubeadm v1.34.4), the lab-binaries
packages step, the bridge CNI, the teardown plan, and the network checks' objects and verdicts.

Shell that the steps run on hosts is run here for real where that touches nothing of the machine:
the lab-binaries probe and copy between temporary folders, and the bridge CNI's route probe,
commands and teardown in a network namespace of their own (no packet leaves it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from mlplat.cluster import cni, inventory, kubeadm as k, netcheck, packages as pk
from mlplat.cluster.kubeadm import plan_text
from mlplat.params import load_params, validate_data
from mlplat.params.schema import Lab

from cluster_helpers import SITE, golden

LAB_KUBELET = {"imageGCHighThresholdPercent": 100, "failSwapOn": False,
               "evictionHard": {"nodefs.available": "0%", "imagefs.available": "0%", "nodefs.inodesFree": "0%"}}
LAB_PROXY = {"mode": "iptables", "conntrack": {"maxPerCore": 0}}


@pytest.fixture
def site():
    return load_params(SITE)


@pytest.fixture
def real_lab(site):
    """The 3-host site as the real-node lab writes it: cgroupfs, cgroup v1, bridge CNI, binaries."""
    p = site.model_copy(deep=True)
    p.kubernetes.cgroup_driver = "cgroupfs"
    p.kubernetes.cni = "bridge"
    p.kubernetes.allow_cgroup_v1 = True
    p.kubernetes.kubelet_config = LAB_KUBELET
    p.kubernetes.kube_proxy_config = LAB_PROXY
    p.os.family, p.os.distro, p.os.version = "debian", "debian", "12"
    p.lab = Lab(state_dir="/var/lib/mlplat-lab", nodes="real", binaries_dir="/opt/mlplat-lab/bin")
    return p


def _problems(kubernetes: dict, lab: dict | None = None) -> dict[str, str]:
    data = {"hosts": [{"name": "a", "address": "10.0.0.1", "roles": ["control-plane"]}], "kubernetes": kubernetes}
    if lab is not None:
        data["lab"] = lab
    _, problems = validate_data(data)
    return {p.path: p.message for p in problems}


# -- params ---------------------------------------------------------------------------------------

def test_new_params_default_to_the_old_behaviour(site):
    kube = site.kubernetes
    assert (kube.cni, kube.allow_cgroup_v1, kube.kubelet_config, kube.kube_proxy_config) == ("flannel", False, {}, {})
    assert kube.net_check_image == "docker.io/library/busybox:1.36.1"
    assert _problems({"cni": "bridge", "kubelet_config": LAB_KUBELET, "kube_proxy_config": LAB_PROXY,
                      "allow_cgroup_v1": True},
                     {"state_dir": "/x", "nodes": "real", "binaries_dir": "/opt/lab/bin"}) == {}


@pytest.mark.parametrize("kubernetes,path,needle", [
    ({"cni": "calico"}, "kubernetes.cni", "'flannel', 'bridge' or 'none'"),
    ({"kubelet_config": {"image_gc_high_threshold_percent": 100}}, "kubernetes.kubelet_config",
     "camelCase as in the kubelet/kube-proxy docs (did you mean 'imageGcHighThresholdPercent'?)"),
    ({"kubelet_config": {"imageGCHighThresholdPercent": "100"}}, "kubernetes.kubelet_config",
     "imageGCHighThresholdPercent: '100' is str, expected int"),
    ({"kubelet_config": {"imageGCHighThresholdPercent": True}}, "kubernetes.kubelet_config", "is a boolean"),
    ({"kubelet_config": {"imageGCHighThresholdPercent": 150}}, "kubernetes.kubelet_config", "not a percentage"),
    ({"kubelet_config": {"evictionHard": "0%"}}, "kubernetes.kubelet_config", "evictionHard: '0%' is str, expected dict"),
    ({"kubelet_config": {"kind": "KubeletConfiguration"}}, "kubernetes.kubelet_config", "kind: mlplat writes it"),
    ({"kubelet_config": ["failSwapOn: false"]}, "kubernetes.kubelet_config", "valid dictionary"),
    ({"kubelet_config": {"cgroupDriver": "cgroupfs"}}, "kubernetes", "set kubernetes.cgroup_driver only"),
    ({"kube_proxy_config": {"mode": "userspace"}}, "kubernetes.kube_proxy_config", "not a kube-proxy mode"),
    ({"kube_proxy_config": {"conntrack": 0}}, "kubernetes.kube_proxy_config", "conntrack: 0 is int, expected dict"),
    ({"allow_cgroup_v1": "maybe"}, "kubernetes.allow_cgroup_v1", "valid boolean"),
])
def test_bad_values_are_refused_with_where_and_what(kubernetes, path, needle):
    got = _problems(kubernetes)
    assert path in got and needle in got[path], got


def test_binaries_dir_must_be_absolute():
    got = _problems({}, {"state_dir": "/x", "nodes": "real", "binaries_dir": "lab/bin"})
    assert "not an absolute path" in got["lab.binaries_dir"]


# -- kubeadm config -------------------------------------------------------------------------------

def test_default_rendering_is_unchanged(site):
    docs = k.render_init(site)
    assert [d["kind"] for d in docs] == ["InitConfiguration", "ClusterConfiguration", "KubeletConfiguration"]
    assert docs[2] == {"apiVersion": k.KUBELET_API, "kind": "KubeletConfiguration", "cgroupDriver": "systemd"}
    assert "ignorePreflightErrors" not in docs[0]["nodeRegistration"]


def test_real_lab_rendering(real_lab):
    docs = k.render_init(real_lab)
    init, _, kubelet, proxy = docs
    assert init["nodeRegistration"]["ignorePreflightErrors"] == ["SystemVerification"]
    assert kubelet == {"apiVersion": k.KUBELET_API, "kind": "KubeletConfiguration", "cgroupDriver": "cgroupfs",
                       "failCgroupV1": False, **LAB_KUBELET}
    assert proxy == {"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration", **LAB_PROXY}
    assert k.validate_config(docs, real_lab.versions.kubernetes, real_lab.hosts) == []
    for h in k.joining_hosts(real_lab):
        [join] = k.render_join(real_lab, h, k.JoinInfo.plan_placeholder(real_lab))
        assert join["nodeRegistration"]["ignorePreflightErrors"] == ["SystemVerification"]
    golden("kubeadm-init-real-lab.yaml", k.dump_docs(docs))


def test_kubelet_config_deep_merges_and_params_win_over_nothing(real_lab):
    p = real_lab.model_copy(deep=True)
    p.kubernetes.kubelet_config = {"evictionHard": {"memory.available": "1%"}, "failCgroupV1": True}
    kubelet = k.render_kubelet(p)
    # a site's explicit value is kept (it asked for it), merged keys stay nested
    assert kubelet["failCgroupV1"] is True and kubelet["evictionHard"] == {"memory.available": "1%"}


def test_fail_cgroup_v1_only_where_the_kubelet_knows_it(real_lab):
    p = real_lab.model_copy(deep=True)
    p.versions.kubernetes = "1.30.14"
    docs = k.render_init(p)
    assert "failCgroupV1" not in docs[2]
    assert docs[0]["nodeRegistration"]["ignorePreflightErrors"] == ["SystemVerification"]
    assert "exists from 1.31" in k.cgroup_v1_note(p)
    note = k.cgroup_v1_note(real_lab)
    assert "SystemVerification ignored" in note and "1.35" in note and "failCgroupV1: false" in note


def test_real_kubeadm_accepts_the_real_lab_config(real_lab, kubeadm_bin, recorded):
    ok, out = k.kubeadm_validate(k.dump_docs(k.render_init(real_lab)), kubeadm_bin)
    assert ok, out
    info = k.parse_join_command((recorded / "kubeadm" / "token-create-print-join-command.v1.9-order.kubeadm-659.txt")
                                .read_text())
    for h in k.joining_hosts(real_lab):
        ok, out = k.kubeadm_validate(k.dump_docs(k.render_join(real_lab, h, info)), kubeadm_bin)
        assert ok, f"{h.name}: {out}"


def test_init_plan_has_no_unconditional_image_pull(site):
    cmds = k.init_plan(site, "x")[0].commands
    assert not any("images pull" in c for c in cmds) and cmds[-1].startswith("kubeadm init --config")


# -- packages: the lab's binaries ------------------------------------------------------------------

def test_package_step_copies_lab_binaries_only_on_the_real_node_lab(site, real_lab):
    assert pk.lab_binaries(site) is None and "dnf install" in plan_text([pk.install_step(site, site.hosts[0])])
    kwok = real_lab.model_copy(deep=True)
    kwok.lab.nodes = "kwok"
    assert pk.lab_binaries(kwok) is None
    text = plan_text([pk.install_step(real_lab, real_lab.hosts[0]), pk.remove_step(real_lab, real_lab.hosts[0])])
    assert "lab: no package repository; the lab-built v1.34.4 binaries from /opt/mlplat-lab/bin" in text
    assert "install -m 0755 /opt/mlplat-lab/bin/kubelet /usr/bin/kubelet" in text
    assert f"file: {pk.KUBELET_UNIT} (mode 0644)" in text and f"file: {pk.KUBEADM_DROPIN} (mode 0644)" in text
    assert "EnvironmentFile=-/etc/default/kubelet" in text and "apt-get" not in text
    golden("packages-lab-binaries.txt", text)


def _fake_binaries(d: Path, version: str = "v1.34.4", kubelet_version: str | None = None) -> None:
    d.mkdir(parents=True, exist_ok=True)
    scripts = {"kubeadm": f'[ "$1 $2 $3" = "version -o short" ] && echo {version}',
               "kubelet": f'[ "$1" = --version ] && echo "Kubernetes {kubelet_version or version}"',
               "kubectl": f'[ "$1 $2" = "version --client" ] && printf "Client Version: {version}\\nKustomize Version: v5.7.1\\n"'}
    for name, body in scripts.items():
        f = d / name
        f.write_text(f"#!/bin/sh\n{body}\n")
        f.chmod(0o755)


def _sh(cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=60)


def test_lab_copy_probe_copy_and_rerun_for_real(real_lab, tmp_path):
    src, dest = tmp_path / "src", tmp_path / "usr-bin"
    _fake_binaries(src)
    dest.mkdir()
    p = real_lab.model_copy(deep=True)
    p.lab.binaries_dir = str(src)
    step = pk.lab_install_step(p, p.hosts[0], dest=str(dest))
    first = _sh(step.probe)
    got = pk.parse_lab_probe(first.stdout)
    assert first.returncode == 1 and got.differs == list(pk.LAB_BINARIES) and pk.lab_problems(p, got) == []
    assert got.versions == {b: "v1.34.4" for b in pk.LAB_BINARIES}
    for c in step.commands[:-1]:  # the version guard and the copies; not systemctl
        r = _sh(c)
        assert r.returncode == 0, (c, r.stderr)
    again = _sh(step.probe)
    assert again.returncode == 0 and pk.parse_lab_probe(again.stdout).same == list(pk.LAB_BINARIES)
    assert all(os.stat(dest / b).st_mode & 0o777 == 0o755 for b in pk.LAB_BINARIES)
    # teardown finds exactly what was copied, removes it, then finds nothing
    rm = pk.lab_remove_step(p, p.hosts[0], dest=str(dest))
    probe = _sh(rm.probe)
    assert probe.returncode == 1 and pk.parse_lab_remove_probe(probe.stdout) == [str(dest / b) for b in pk.LAB_BINARIES]
    (dest / "kubectl").write_text("#!/bin/sh\necho a site's own kubectl\n")
    out = _sh(rm.commands[0])
    assert out.returncode == 0 and f"kept {dest}/kubectl" in out.stdout
    assert sorted(x.name for x in dest.iterdir()) == ["kubectl"]
    assert _sh(rm.probe).returncode == 0


def test_lab_binaries_of_another_version_are_refused_before_any_copy(real_lab, tmp_path):
    src, dest = tmp_path / "src", tmp_path / "usr-bin"
    _fake_binaries(src, kubelet_version="v1.33.9")
    (src / "kubectl").unlink()
    dest.mkdir()
    p = real_lab.model_copy(deep=True)
    p.lab.binaries_dir = str(src)
    step = pk.lab_install_step(p, p.hosts[0], dest=str(dest))
    got = pk.parse_lab_probe(_sh(step.probe).stdout)
    problems = pk.lab_problems(p, got)
    assert f"{src}/kubectl is missing (build the lab binaries: mlplat lab build)" in problems
    assert f"{src}/kubelet is v1.33.9, versions.kubernetes pins v1.34.4" in problems
    guard = _sh(step.commands[0])
    assert guard.returncode == 1 and "kubelet is v1.33.9" in guard.stderr and not list(dest.iterdir())


# -- bridge CNI -----------------------------------------------------------------------------------

def _node(name, cidr, ip, ready=True, runtime="containerd://1.6.20"):
    return {"metadata": {"name": name},
            "spec": {"podCIDR": cidr, "podCIDRs": [cidr]} if cidr else {},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}]
                       if ip else [],
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False",
                                       "reason": "KubeletNotReady", "message": "cni plugin not initialized"}],
                       "nodeInfo": {"containerRuntimeVersion": runtime, "kubeletVersion": "v1.34.4"}}}


NODES = [_node("gpu-1", "10.244.0.0/24", "10.20.0.11"), _node("gpu-2", "10.244.1.0/24", "10.20.0.12"),
         _node("gpu-3", "10.244.2.0/24", None)]


def test_conflist_and_routes(real_lab):
    conf = json.loads(cni.conflist("10.244.1.0/24"))
    bridge, portmap = conf["plugins"]
    assert (conf["name"], conf["cniVersion"]) == ("mlplat-bridge", "0.4.0")
    assert (bridge["type"], bridge["bridge"], bridge["isGateway"], bridge["ipMasq"]) == ("bridge", "cni0", True, True)
    assert bridge["ipam"]["type"] == "host-local" and bridge["ipam"]["ranges"] == [[{"subnet": "10.244.1.0/24"}]]
    assert portmap == {"type": "portmap", "capabilities": {"portMappings": True}}
    nets = cni.node_networks(NODES, real_lab)
    assert nets["gpu-3"].address == "10.20.0.13", "no InternalIP: the params' node address"
    assert cni.routes_for("gpu-2", nets) == [("10.244.0.0/24", "10.20.0.11"), ("10.244.2.0/24", "10.20.0.13")]
    steps = [cni.host_step(real_lab, h, nets[h.name].pod_cidr, cni.routes_for(h.name, nets)) for h in real_lab.hosts]
    assert all(s.files_when_converged and s.files[0].path == "/etc/cni/net.d/10-mlplat-bridge.conflist" for s in steps)
    golden("bridge-cni-3gpu.txt", plan_text(steps))


def test_plugin_check_says_where_the_distribution_put_them():
    assert cni.plugin_problem("") is None
    msg = cni.plugin_problem("missing portmap\nelsewhere /usr/lib/cni/portmap\nmissing loopback\n")
    assert msg.startswith("CNI plugins missing in /opt/cni/bin: portmap, loopback") and "/usr/lib/cni" in msg
    assert "containernetworking-plugins" in cni.plugin_problem("missing bridge\n")
    r = _sh(cni.plugin_check())  # read-only, on this machine
    assert r.returncode == 0 and all(ln.split()[0] in ("missing", "elsewhere") for ln in r.stdout.splitlines())


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")
def test_plugins_in_the_rhel_folder_are_found_and_linked():
    """Fedora/RHEL's containernetworking-plugins puts them in /usr/libexec/cni: the check finds them
    there and the link command makes /opt/cni/bin whole. Run in a private mount namespace whose /opt,
    /usr/libexec and /usr/lib/cni are empty tmpfs (nothing of the machine is touched)."""
    tmpfs = " ".join(f"mount -t tmpfs none {d};" for d in ("/opt", "/usr/libexec") + (
        ("/usr/lib/cni",) if Path("/usr/lib/cni").is_dir() else ()))
    plugins = " ".join(cni.PLUGINS)
    body = (f"mount --make-rprivate /; {tmpfs} mkdir -p /usr/libexec/cni; "
            f"for p in {plugins}; do printf '#!/bin/sh\\n' > /usr/libexec/cni/$p; chmod 755 /usr/libexec/cni/$p; done; "
            f"{cni.plugin_check()}; echo @@; ")
    first = subprocess.run(["unshare", "--mount", "sh", "-c", body], capture_output=True, text=True, timeout=60)
    text = first.stdout.split("@@")[0]
    assert first.returncode == 0 and cni.distro_dirs(text) == "/usr/libexec/cni", (first.stdout, first.stderr)
    assert "the distribution's package put them in /usr/libexec/cni" in cni.plugin_problem(text)
    link = cni.link_command(text)
    assert link and "ln -sfn /usr/libexec/cni/bridge /opt/cni/bin/bridge" in link
    again = subprocess.run(["unshare", "--mount", "sh", "-c", body + f"{link} && {cni.plugin_check()}"],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and again.stdout.split("@@")[1].strip() == "", (again.stdout, again.stderr)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")
def test_reset_probe_sees_only_the_cni_files_teardown_removes():
    """Another tool's CNI config (podman's) is not a leftover of ours: teardown does not remove it,
    so the probe must not count it, or it would never pass. flannel's and Istio's are. Run in a
    private mount namespace with an empty tmpfs /etc."""
    def paths(files: str) -> list[str]:
        body = (f"mount --make-rprivate /; mount -t tmpfs none /etc; mkdir -p /etc/cni/net.d; "
                f"for f in {files}; do echo '{{}}' > /etc/cni/net.d/$f; done; {inventory.host_probe()}")
        r = subprocess.run(["unshare", "--mount", "sh", "-c", body], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return [x for x in inventory.parse_host_probe(r.stdout)["path"] if x.startswith("/etc/")]

    assert paths("87-podman-bridge.conflist") == []
    assert paths("87-podman-bridge.conflist 10-flannel.conflist ZZZ-istio-cni-kubeconfig") == [
        "/etc/cni/net.d/10-flannel.conflist", "/etc/cni/net.d/ZZZ-istio-cni-kubeconfig"]


def _netns_script(body: str) -> subprocess.CompletedProcess:
    """Run ``body`` in a fresh network namespace with a veth pair (10.20.0.11/24 and .12): routes
    can be added there, and no packet leaves it (IPv6 off, nothing beyond the pair)."""
    setup = ("set -e; sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1; "
             "ip link set lo up; ip link add a0 type veth peer name b0; ip addr add 10.20.0.11/24 dev a0; "
             "ip link set a0 up; ip link set b0 up; set +e\n")
    return subprocess.run(["unshare", "--net", "sh", "-c", setup + body], capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")
def test_routes_converge_and_teardown_removes_them_in_a_network_namespace(real_lab):
    pod = real_lab.kubernetes.pod_cidr
    routes = [("10.244.1.0/24", "10.20.0.12"), ("10.244.2.0/24", "10.20.0.13")]
    step = cni.host_step(real_lab, real_lab.hosts[0], "10.244.0.0/24", routes)
    probe = inventory.host_probe(pod)
    body = "\n".join([
        "ip route add 10.244.9.0/24 via 10.20.0.99",          # a node that left
        f"{step.probe}; echo probe1=$?",
        *step.commands,
        f"{step.probe}; echo probe2=$?",
        *step.commands,                                      # a rerun changes nothing and fails nothing
        f"{step.probe}; echo probe3=$?",
        f"{probe}",
        *cni.reset_commands(pod),
        "echo after-reset",
        f"{probe}",
    ])
    r = _netns_script(body)
    if "Operation not permitted" in r.stderr and "probe1" not in r.stdout:
        pytest.skip(f"no network namespace here: {r.stderr.strip()[-200:]}")
    out = r.stdout
    assert "probe1=1" in out and "probe2=0" in out and "probe3=0" in out, (out, r.stderr)
    before, after = out.split("after-reset")
    found = inventory.parse_host_probe(before.split("probe3=0")[1])["route"]
    assert found == ["10.244.1.0/24 via 10.20.0.12", "10.244.2.0/24 via 10.20.0.13"], out
    assert inventory.parse_host_probe(after)["route"] == []


# -- teardown -------------------------------------------------------------------------------------

def test_teardown_plan_resets_and_removes_what_30_left(real_lab):
    steps = inventory.reset_steps(real_lab)
    assert [s.host for s in steps] == ["gpu-2", "gpu-3", "gpu-1"], "workers first"
    text = plan_text(steps[:1])
    for needle in ("kubeadm reset -f", "rm -rf /etc/cni/net.d/10-mlplat-bridge.conflist /var/lib/cni/networks/mlplat-bridge",
                   "ip -4 route show root 10.244.0.0/16", "ip link delete $l", "/etc/kubernetes/pki",
                   "rmdir /etc/kubernetes/manifests /etc/kubernetes"):
        assert needle in text, needle
    golden("reset-real-lab.txt", text)
    assert pk.remove_step(real_lab, real_lab.hosts[0]).why.startswith("lab: remove the binaries")


def test_reset_probe_ignores_a_kubeadm_binary_alone():
    """Packages kept after a reset must not make every later teardown run kubeadm reset again."""
    pred = inventory.reset_probe().rsplit("; ", 1)[1]
    assert _sh(f'out="binary kubeadm"; {pred}').returncode == 0
    assert _sh(f'out="binary kubeadm\npath /etc/kubernetes/pki"; {pred}').returncode == 1
    assert inventory.parse_host_probe("route 10.244.1.0/24 via 10.0.0.2\nlink cni0\n") == {
        "path": [], "binary": [], "link": ["cni0"], "route": ["10.244.1.0/24 via 10.0.0.2"], "iptables": []}


# -- network checks -------------------------------------------------------------------------------

def test_runtime_rows(real_lab):
    nodes_ = [NODES[0], _node("gpu-2", "10.244.1.0/24", "10.20.0.12", runtime="docker://24.0.7"),
              _node("gpu-3", "10.244.2.0/24", "10.20.0.13", ready=False)]
    rows = {r.host: r for r in netcheck.runtime_rows(nodes_, real_lab)}
    assert rows["gpu-1"].ok and rows["gpu-1"].message == "Ready; containerd://1.6.20; kubelet v1.34.4"
    assert not rows["gpu-2"].ok and "container runtime is docker://24.0.7, not containerd" in rows["gpu-2"].message
    assert "kubelet must use containerd's CRI socket" in rows["gpu-2"].hint
    assert not rows["gpu-3"].ok and "NotReady (KubeletNotReady: cni plugin not initialized)" in rows["gpu-3"].message
    assert not netcheck.runtime_rows(NODES[:1], real_lab)[1].ok
    assert netcheck.pick_nodes(nodes_, real_lab) == ("gpu-1", "gpu-2")
    assert netcheck.pick_nodes(NODES[:1], real_lab) == ("gpu-1", None)


def _pod(name, ready, node="gpu-1", waiting=None):
    cs = [{"state": {"waiting": {"reason": waiting, "message": "x"}}}] if waiting else []
    return {"metadata": {"name": name}, "spec": {"nodeName": node},
            "status": {"phase": "Running" if ready else "Pending", "containerStatuses": cs,
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def test_coredns_row():
    ok = netcheck.coredns_row([_pod("coredns-1", True), _pod("coredns-2", True, "gpu-2")], "k")
    assert ok.ok and ok.message == "2/2 CoreDNS pods Ready (on gpu-1, gpu-2)"
    bad = netcheck.coredns_row([_pod("coredns-1", True), _pod("coredns-2", False, waiting="ContainerCreating")], "k")
    assert not bad.ok and "CoreDNS not ready: 1/2 pods Ready (coredns-2 Pending ContainerCreating: x)" in bad.message
    assert "CNI" in bad.hint
    assert "addon/coredns" in netcheck.coredns_row([], "k").message
    assert netcheck.image_problem(_pod("p", False, waiting="ErrImagePull")) == "ErrImagePull: x"


def test_pods_and_service(real_lab):
    ip = netcheck.kubernetes_service_ip(real_lab)
    assert ip == "10.96.0.1"
    objs = [netcheck.dns_pod("dns", "ns1", "busybox:1", "gpu-2", ip), netcheck.server_pod("web", "ns1", "busybox:1", "gpu-1", "t0k"),
            netcheck.client_pod("client", "ns1", "busybox:1", "gpu-2", "web", "10.96.4.4"), netcheck.service("web", "ns1")]
    for o in objs[:3]:
        c = o["spec"]["containers"][0]
        assert c["imagePullPolicy"] == "IfNotPresent" and o["spec"]["tolerations"] == [{"operator": "Exists"}]
        assert o["metadata"]["labels"]["mlplat.io/smoke"] == "net"
    terms = objs[0]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms == {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In",
                                                             "values": ["gpu-2"]}]}]}
    assert objs[1]["spec"]["containers"][0]["readinessProbe"] == {"tcpSocket": {"port": 8080}, "periodSeconds": 2}
    client = objs[2]["spec"]["containers"][0]["command"][2]
    assert "timeout 5 wget -qO- http://web.ns1.svc.cluster.local:80/" in client and "http://10.96.4.4:80/" in client
    assert objs[3]["spec"]["selector"] == objs[1]["metadata"]["labels"]


def test_verdicts():
    nx = "Server:\t\t10.96.0.10\nAddress:\t10.96.0.10:53\n\n** server can't find kubernetes.default.svc.cluster.local: NXDOMAIN\n"
    ok = "Server:\t\t10.96.0.10\nAddress:\t10.96.0.10:53\n\nName:\tkubernetes.default.svc.cluster.local\nAddress: 10.96.0.1\n"
    assert netcheck.dns_verdict(ok, True, "10.96.0.1") == (True, "kubernetes.default.svc.cluster.local -> 10.96.0.1")
    good, msg = netcheck.dns_verdict(nx, False, "10.96.0.1")
    assert not good and msg.startswith("DNS lookup of kubernetes.default.svc.cluster.local failed")
    assert netcheck.service_verdict("name-ok t0k\n", "t0k") == (True, "answered with the server's page")
    dns_fault = netcheck.service_verdict("name-failed: wget: bad address 'web.ns1'\nip-ok t0k\n", "t0k")
    assert not dns_fault[0] and "a DNS fault" in dns_fault[1] and "bad address" in dns_fault[1]
    net_fault = netcheck.service_verdict("name-failed: wget: download timed out\nip-failed: wget: download timed out\n", "t0k")
    assert not net_fault[0] and "kube-proxy or pod-routing fault" in net_fault[1]


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("busybox") is None,
                    reason="needs root, unshare and busybox")
def test_client_script_tells_dns_from_routing_faults_for_real(tmp_path):
    """The client pod's script under busybox, in a network namespace holding only loopback: the
    Service name cannot resolve there (no route anywhere), the 'ClusterIP' is a busybox httpd on
    127.0.0.1."""
    (tmp_path / "index.html").write_text("t0k\n")
    bb = tmp_path / "bin"
    bb.mkdir()
    for applet in ("wget", "seq", "timeout", "sleep", "httpd"):  # busybox's, as in the pod's image
        (bb / applet).symlink_to(shutil.which("busybox"))
    pod = netcheck.client_pod("client", "ns1", "busybox", "n", "web", "127.0.0.1", tries=1)
    script = pod["spec"]["containers"][0]["command"][2].replace(":80/", ":18080/")
    body = (f"PATH={bb}:$PATH; httpd -f -p 127.0.0.1:18080 -h {tmp_path} & h=$!; sleep 0.3; "
            f"( {script} ); kill $h")
    r = subprocess.run(["unshare", "--net", "sh", "-c", "ip link set lo up; " + body], capture_output=True, text=True,
                       timeout=60)
    if "ip-" not in r.stdout:
        pytest.skip(f"no network namespace here: {r.stderr.strip()[-200:]}")
    ok, detail = netcheck.service_verdict(r.stdout, "t0k")
    assert not ok and "a DNS fault" in detail, r.stdout


# -- params file round trip -----------------------------------------------------------------------

def test_lab_params_file_round_trip(real_lab, tmp_path):
    """What the lab would write loads back to the same settings."""
    f = tmp_path / "lab.yaml"
    f.write_text(yaml.safe_dump(real_lab.model_dump(mode="json", exclude_defaults=True), sort_keys=False))
    back = load_params(f)
    assert back.kubernetes == real_lab.kubernetes and back.lab == real_lab.lab
