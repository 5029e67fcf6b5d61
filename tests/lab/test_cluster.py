"""Integration tests of the lab cluster: real etcd, API server, controllers and scheduler, KWOK nodes,
and the real Kubeflow training operator, in the lab's loopback-only network namespace. No mocks.

The binaries come from :func:`mlplat.lab.build.ensure_binaries` (a cache hit once built; a cold
build takes about 10 minutes on 2 cores). The first tests need neither binaries nor a cluster.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from mlplat.lab import build, cluster

from lab_support import wait_webhook_active  # tests/kube (tests/conftest.py)

SUFFIX = uuid.uuid4().hex[:6]
NODES = [
    {"name": f"lab-cp-{SUFFIX}", "gpus": 0, "roles": ["control-plane"]},
    {"name": f"lab-gpu1-{SUFFIX}", "gpus": 8, "roles": ["worker"]},
    {"name": f"lab-gpu2-{SUFFIX}", "gpus": 4, "roles": ["worker"]},
]
TEST_LABEL = {"mlplat.io/test": f"lab-cluster-{SUFFIX}"}


@pytest.fixture(scope="session")
def binaries() -> dict[str, Path]:
    if os.geteuid() != 0:
        pytest.skip("the lab cluster needs root (its network namespace, the operator's mount namespace)")
    if shutil.which("go") is None:
        try:
            return build.ensure_binaries(progress=lambda s: None)
        except build.LabBuildError as e:
            pytest.skip(f"lab binaries are not built and Go is missing: {e}")
    return build.ensure_binaries()


@pytest.fixture(scope="module")
def lab(binaries, tmp_path_factory):
    state = tmp_path_factory.mktemp("lab-state")
    logs_file = state / "chosen" / "default.log"
    cluster.write_pod_log(logs_file, "default log line 1\ndefault log line 2")
    try:
        info = cluster.up(state, state / "kubeconfig", NODES, logs_file=logs_file, binaries=binaries)
    except BaseException:
        cluster.down(state)  # pytest deletes old temp dirs, pid files included: never leave processes
        raise
    pids = _lab_pids(info) + [_forwarder_pid(info)]
    netns = cluster.netns_path(state)
    ident = _ns_ident(netns)
    yield info
    cluster.down(state)
    alive = [p for p in pids if cluster._process_alive(p)]
    assert not alive, f"processes left after down: {alive}"
    _assert_no_namespace_left(netns, ident)


@pytest.fixture(scope="module")
def api(lab):
    from kubernetes import config

    return config.new_client_from_config(config_file=str(lab.kubeconfig))


@pytest.fixture
def namespace(api):
    from kubernetes import client

    core = client.CoreV1Api(api)
    name = f"t-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=TEST_LABEL)))
    yield name
    core.delete_namespace(name)


def _lab_pids(info: cluster.ClusterInfo) -> list[int]:
    return [c["pid"] for c in cluster._components(info.cluster_dir).values() if c["pid"]]


def _forwarder_pid(info: cluster.ClusterInfo) -> int:
    return int((info.state_dir / "apiserver-forwarder.pid").read_text())


def _ns_ident(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _net_ns_of(pid: int) -> tuple[int, int]:
    return _ns_ident(Path(f"/proc/{pid}/ns/net"))


def _assert_no_namespace_left(netns: Path, ident: tuple[int, int]) -> None:
    """No file, no mount, no process in it: the namespace is gone."""
    assert not netns.exists(), f"{netns} left after down"
    assert str(netns) not in Path("/proc/self/mountinfo").read_text(), "netns still mounted"
    inside = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if _net_ns_of(int(d.name)) == ident:
                    inside.append(int(d.name))
            except OSError:
                pass
    assert not inside, f"processes still in the lab's network namespace: {inside}"


def _root_listeners() -> list[tuple[str, int]]:
    """(local address, pid) of every TCP listener in the machine's (this process's) network namespace."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        local = line.split()[3]
        for pid in re.findall(r"pid=(\d+)", line):
            rows.append((local, int(pid)))
    return rows


def _in_netns(lab, *argv: str) -> subprocess.CompletedProcess:
    proc = cluster.netns_popen(lab.state_dir, list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=30)
    return subprocess.CompletedProcess(argv, proc.returncode, out, "")


def _out_no_routes(pid: int) -> int:
    """The kernel's Ip OutNoRoutes counter of ``pid``'s network namespace (packets not sent: no route)."""
    head, values = [line.split() for line in Path(f"/proc/{pid}/net/snmp").read_text().splitlines()
                    if line.startswith("Ip:")][:2]
    return int(values[head.index("OutNoRoutes")])


def _wait(what, check, timeout=90, interval=0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def _kubectl(lab, *args, check=True):
    return cluster.kubectl({"kubectl": lab.kubectl}, lab.kubeconfig, *args, check=check)


def _listening_sockets(pid: int) -> list[str]:
    """Local addresses (ip:port) of the TCP sockets ``pid`` listens on, read from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            cols = line.split()
            local, state, inode = cols[1], cols[3], cols[9]
            if state != "0A" or inode not in inodes:  # 0A = LISTEN
                continue
            hexip, hexport = local.split(":")
            raw = bytes.fromhex(hexip)
            # /proc prints each 32-bit word in host (little-endian) order.
            ip = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.append(f"{ipaddress.ip_address(ip)}:{int(hexport, 16)}")
    return found


def test_wrapper_modules_require_the_pinned_versions():
    for component in build.COMPONENTS:
        gomod = (component.wrapper / "go.mod").read_text()
        assert f"{component.module} {component.version}" in gomod, component.name
        assert (component.wrapper / "go.sum").stat().st_size > 0
        assert not list(component.wrapper.glob("vendor")), "no vendored upstream code"
    kube = (build.GO_DIR / "kubernetes" / "go.mod").read_text()
    minor = build.VERSIONS["kubernetes"].split(".")[1]
    assert kube.count("=> k8s.io/") == 31 and kube.count(f" v0.{minor}.") >= 31


def test_missing_go_is_a_permanent_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("MLPLAT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(build.LabBuildError, match="Go toolchain is not on PATH") as e:
        build.ensure_binaries(force=True, progress=lambda s: None)
    assert e.value.permanent
    assert not list((tmp_path / "cache" / "bin").glob("*-v*")), "nothing built or half-built"


def test_component_sets_select_what_each_lab_builds():
    def names(components):
        return [c.name for c in components]

    assert names(build.select_components(None)) == list(build.KWOK_COMPONENTS)
    assert names(build.select_components(build.NODE_SETS["real"])) == [
        "kubernetes", "kubernetes-node", "etcd", "training-operator", "coredns", "flannel", "flannel-cni"]
    assert names(build.select_components("coredns")) == ["coredns"]
    assert set(build.NODE_SETS["all"]) == {c.name for c in build.COMPONENTS}
    assert not {"kubernetes-node", "coredns", "flannel", "flannel-cni"} & set(build.KWOK_COMPONENTS)
    # flanneld links libc as upstream builds it (its UDP backend is cgo); everything else is static.
    assert [c.name for c in build.COMPONENTS if c.cgo] == ["flannel"]
    # The CLI's --nodes choices are NODE_SETS' keys (written out there to keep `mlplat` start-up light).
    from mlplat.cli import parser
    build_cmd = parser()._subparsers._group_actions[0].choices["lab"]._subparsers._group_actions[0].choices["build"]
    nodes = next(a for a in build_cmd._actions if a.dest == "nodes")
    assert set(nodes.choices) == set(build.NODE_SETS) and nodes.default == "kwok"
    # The node binaries share the control plane's wrapper, version stamp and tags; cached apart.
    kube, node = (next(c for c in build.COMPONENTS if c.name == n) for n in ("kubernetes", "kubernetes-node"))
    assert node.wrapper == kube.wrapper and node.version == kube.version
    assert (node.ldflags, node.tags) == (kube.ldflags, kube.tags)
    assert build.component_dir(node).name == f"kubernetes-node-{kube.version}"
    for pkg in ("k8s.io/client-go/pkg/version", "k8s.io/component-base/version"):
        assert f"-X '{pkg}.gitVersion={kube.version}'" in node.ldflags


def test_unknown_component_is_a_permanent_error_before_anything_is_built(monkeypatch, tmp_path):
    monkeypatch.setenv("MLPLAT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(build.LabBuildError, match="unknown component.* kubelet: choose from") as e:
        build.ensure_binaries(components=["etcd", "kubelet"], progress=lambda s: None)
    assert e.value.permanent
    assert not (tmp_path / "cache").exists()


def _fake_cache(root: Path, component: build.Component, outputs: dict[str, str]) -> None:
    """A cache directory for ``component`` whose binaries are shell scripts printing ``outputs``."""
    d = root / "bin" / f"{component.name}-{component.version}"
    d.mkdir(parents=True)
    for name, text in outputs.items():
        (d / name).write_text(f"#!/bin/sh\nprintf '%s\\n' '{text}'\n")
        (d / name).chmod(0o755)
    stamp = {"component": component.name, "version": component.version, "manifest": build._manifest_hash(component)}
    (d / "stamp.json").write_text(json.dumps(stamp))


def test_selected_components_come_from_the_cache_after_their_version_check(monkeypatch, tmp_path):
    """Only the selected components are checked and returned; a binary reporting another version
    invalidates its component's cache (here: a rebuild is attempted and fails for want of Go)."""
    monkeypatch.setenv("MLPLAT_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "no-go"))
    by_name = {c.name: c for c in build.COMPONENTS}
    kube_v, dns_v = build.VERSIONS["kubernetes"], build.VERSIONS["coredns"]
    _fake_cache(tmp_path, by_name["kubernetes-node"], {"kubelet": f"Kubernetes {kube_v}", "kube-proxy": f"Kubernetes {kube_v}"})
    _fake_cache(tmp_path, by_name["coredns"], {"coredns": f"CoreDNS-{dns_v.lstrip('v')}"})
    lines: list[str] = []
    paths = build.ensure_binaries(components=["coredns", "kubernetes-node"], progress=lines.append)
    assert list(paths) == ["kubelet", "kube-proxy", "coredns"]
    assert paths["kubelet"] == tmp_path / "bin" / f"kubernetes-node-{kube_v}" / "kubelet"
    assert sum("cached in" in line for line in lines) == 2, lines
    (paths["kubelet"]).write_text("#!/bin/sh\necho 'Kubernetes v1.34.3'\n")
    with pytest.raises(build.LabBuildError, match="Go toolchain is not on PATH"):
        build.ensure_binaries(components=["kubernetes-node"], progress=lines.append)
    assert "kubelet reports 'Kubernetes v1.34.3', want v1.34.4" in lines[-1]


def test_a_failed_go_build_names_the_component_and_shows_the_go_stderr_tail(monkeypatch, tmp_path):
    fake = tmp_path / "fakebin"
    fake.mkdir()
    (fake / "go").write_text(textwrap.dedent("""\
        #!/bin/sh
        [ "$1" = version ] && { echo "go version go0.0 fake"; exit 0; }
        echo "go: downloading example.invalid/dep v1.0.0"
        echo "fake-go: missing go.sum entry for module providing package example.invalid/dep" >&2
        exit 1
        """))
    (fake / "go").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("MLPLAT_CACHE", str(tmp_path / "cache"))
    lines: list[str] = []
    with pytest.raises(build.LabBuildError) as e:
        build.ensure_binaries(force=True, components=["coredns"], progress=lines.append)
    msg = str(e.value)
    assert not e.value.permanent
    assert f"coredns: coredns {build.VERSIONS['coredns']} | go build failed (rc=1)" in msg
    assert "fake-go: missing go.sum entry" in msg
    assert any("coredns: coredns" in line and "building" in line for line in lines), lines
    assert not (tmp_path / "cache" / "bin" / f"coredns-{build.VERSIONS['coredns']}").exists()


def test_real_node_binaries_report_their_pinned_versions():
    """The cached kubelet, kube-proxy, kubeadm, kubectl and CoreDNS (never built here: skipped when
    `mlplat lab build --nodes real` has not run), and kubeadm's image list naming this CoreDNS."""
    by_name = {c.name: c for c in build.COMPONENTS}
    for name in ("kubernetes", "kubernetes-node", "coredns"):
        c = by_name[name]
        valid, why = build._cache_valid(c, build._manifest_hash(c))
        if not valid:
            pytest.skip(f"{name} is not in the build cache ({why}): mlplat lab build --nodes real")
    kube_v, dns_v = build.VERSIONS["kubernetes"], build.VERSIONS["coredns"]
    kdir, ndir = build.component_dir(by_name["kubernetes"]), build.component_dir(by_name["kubernetes-node"])

    def out(*cmd) -> str:
        return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=True, timeout=60).stdout

    # kubeadm's preflight parses `kubelet --version`: exactly "Kubernetes vX.Y.Z".
    assert out(ndir / "kubelet", "--version") == f"Kubernetes {kube_v}\n"
    assert out(ndir / "kube-proxy", "--version") == f"Kubernetes {kube_v}\n"
    assert out(kdir / "kubeadm", "version", "-o", "short") == f"{kube_v}\n"
    assert out(kdir / "kubectl", "version", "--client", "-o", "json").count(f'"gitVersion": "{kube_v}"') == 1
    dns = out(build.component_dir(by_name["coredns"]) / "coredns", "-version").splitlines()
    assert dns[0] == f"CoreDNS-{dns_v.lstrip('v')}" and dns[1].endswith(build.COREDNS_GIT_COMMIT)
    # An explicit version needs no network; CoreDNS is the one kubeadm deploys.
    images = out(kdir / "kubeadm", "config", "images", "list", "--kubernetes-version", kube_v).split()
    assert f"registry.k8s.io/coredns/coredns:{dns_v}" in images
    assert f"registry.k8s.io/kube-proxy:{kube_v}" in images


def test_invalid_nodes_are_refused_before_anything_starts(tmp_path):
    with pytest.raises(cluster.LabClusterError) as e:
        cluster.up(tmp_path, tmp_path / "kubeconfig",
                   [{"name": "a", "gpus": -1}, {"name": "a", "roles": "worker"}, {"gpus": 2}],
                   binaries={})
    assert e.value.permanent
    for part in ("gpus must be", "duplicate name 'a'", "roles must be a list", "nodes[2]: needs a name"):
        assert part in str(e.value)
    assert not list(tmp_path.iterdir())


def test_pod_log_files_are_written_in_cri_format(tmp_path):
    path = cluster.write_pod_log(tmp_path / "x.log", "one\ntwo")
    lines = path.read_text().splitlines()
    assert [line.split(" ", 3)[1:] for line in lines] == [["stdout", "F", "one"], ["stdout", "F", "two"]]
    manifest = cluster.pod_logs_manifest("ns", "pod-1", path)
    assert manifest["kind"] == "Logs" and manifest["metadata"] == {"name": "pod-1", "namespace": "ns"}


def test_the_lab_namespace_has_only_loopback_and_goes_away(tmp_path):
    """The namespace on its own (root only, no binaries): only lo, no route beyond loopback, a
    process started in it lives there, and deleting it leaves no file, mount or process."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    p = cluster._paths(tmp_path)
    with pytest.raises(cluster.LabClusterError, match="run lab up"):
        cluster.netns_popen(tmp_path, ["true"])
    cluster._create_netns(p["netns"])
    try:
        assert cluster._netns_mounted(p["netns"])
        ident = _ns_ident(p["netns"])
        assert cluster._on_netns_thread(p["netns"], cluster._links_here) == ["lo"]
        assert cluster._on_netns_thread(p["netns"], cluster._unreachable_here) == "ENETUNREACH"
        proc = cluster.netns_popen(tmp_path, ["sleep", "600"])
        # (until nsenter has joined the namespace and exec'd, the child is still in the machine's)
        _wait("sleep to run in the namespace", lambda: cluster._cmdline(proc.pid)[:1] == ["sleep"], timeout=10, interval=0.05)
        assert _net_ns_of(proc.pid) == ident and cluster._netns_pids(p["netns"]) == [proc.pid]
        with pytest.raises(FileNotFoundError):
            cluster.netns_popen(tmp_path, ["no-such-command-here"])
        cluster._create_netns(p["netns"])  # again: the same namespace
        assert _ns_ident(p["netns"]) == ident
        assert cluster._stop_netns_processes(p, progress=lambda s: None) == []
        proc.wait(5)
    finally:
        cluster._delete_netns(p["netns"])
    _assert_no_namespace_left(p["netns"], ident)


@pytest.mark.lab_cluster
def test_nodes_have_gpus_roles_and_no_taints(lab):
    items = {n["metadata"]["name"]: n for n in json.loads(_kubectl(lab, "get", "nodes", "-o", "json").stdout)["items"]}
    for want in NODES:
        node = items[want["name"]]
        alloc = node["status"]["allocatable"]
        if want["gpus"]:
            assert alloc["nvidia.com/gpu"] == str(want["gpus"])
            assert node["status"]["capacity"]["nvidia.com/gpu"] == str(want["gpus"])
        else:
            assert "nvidia.com/gpu" not in alloc
        labels = node["metadata"]["labels"]
        assert labels["mlplat.io/lab"] == "true"
        for role in want["roles"]:
            assert f"node-role.kubernetes.io/{role}" in labels
        assert not node["spec"].get("taints")
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True"
    # What the issue asks to show: `kubectl get nodes` lists the GPU nodes with their allocatable.
    out = _kubectl(lab, "get", "nodes", "-o",
                   r"custom-columns=NAME:.metadata.name,GPU:.status.allocatable.nvidia\.com/gpu").stdout
    rows = [line.split() for line in out.splitlines()]
    assert [f"lab-gpu1-{SUFFIX}", "8"] in rows and [f"lab-gpu2-{SUFFIX}", "4"] in rows


@pytest.mark.lab_cluster
def test_status_reports_every_component_healthy(lab):
    rows = {r["component"]: r for r in cluster.status(lab.state_dir)}
    for name in cluster.COMPONENTS:
        assert rows[name]["ok"], rows[name]


@pytest.mark.lab_cluster
def test_up_twice_is_harmless(lab, binaries):
    again = cluster.up(lab.state_dir, lab.kubeconfig, NODES, logs_file=lab.logs_file, binaries=binaries)
    assert again.reused
    assert again.server == lab.server
    assert _lab_pids(again) == _lab_pids(lab)
    with pytest.raises(cluster.LabClusterError, match="run lab down first") as e:
        cluster.up(lab.state_dir, lab.kubeconfig, NODES, logs_file=lab.logs_file.with_name("other.log"),
                   binaries=binaries)
    assert e.value.permanent


@pytest.mark.lab_cluster
def test_deployment_becomes_available(api, namespace):
    from kubernetes import client

    apps = client.AppsV1Api(api)
    labels = {"app": "web", **TEST_LABEL}
    container = client.V1Container(
        name="web", image="registry.invalid/web:1",
        resources=client.V1ResourceRequirements(limits={"nvidia.com/gpu": "1"}))
    apps.create_namespaced_deployment(namespace, client.V1Deployment(
        metadata=client.V1ObjectMeta(name="web", labels=labels),
        spec=client.V1DeploymentSpec(
            replicas=2, selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(metadata=client.V1ObjectMeta(labels=labels),
                                              spec=client.V1PodSpec(containers=[container])))))

    def available():
        d = apps.read_namespaced_deployment_status("web", namespace)
        return any(c.type == "Available" and c.status == "True" for c in d.status.conditions or []) and \
            d.status.available_replicas == 2

    _wait("deployment Available", available)
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector="app=web").items
    assert {p.spec.node_name for p in pods} <= {n["name"] for n in NODES if n["gpus"]}


@pytest.mark.lab_cluster
def test_job_completes_and_logs_return_the_chosen_file(lab, api, namespace, tmp_path):
    from kubernetes import client

    batch = client.BatchV1Api(api)
    batch.create_namespaced_job(namespace, client.V1Job(
        metadata=client.V1ObjectMeta(name="hello", labels=TEST_LABEL),
        spec=client.V1JobSpec(backoff_limit=0, template=client.V1PodTemplateSpec(
            metadata=client.V1ObjectMeta(labels=TEST_LABEL),
            spec=client.V1PodSpec(restart_policy="Never", containers=[client.V1Container(
                name="main", image="registry.invalid/hello:1",
                resources=client.V1ResourceRequirements(limits={"nvidia.com/gpu": "2"}))])))))

    def complete():
        j = batch.read_namespaced_job_status("hello", namespace)
        return any(c.type == "Complete" and c.status == "True" for c in j.status.conditions or [])

    _wait("job Complete", complete)
    pod = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector="job-name=hello").items[0]
    assert pod.status.phase == "Succeeded"

    # The cluster-wide default: the file given to up().
    logs = _kubectl(lab, "logs", "-n", namespace, pod.metadata.name).stdout
    assert logs == "default log line 1\ndefault log line 2\n"
    # The file may change between reads: it is read at request time.
    cluster.write_pod_log(lab.logs_file, "rewritten")
    assert _kubectl(lab, "logs", "-n", namespace, pod.metadata.name).stdout == "rewritten\n"
    cluster.write_pod_log(lab.logs_file, "default log line 1\ndefault log line 2")

    # Per pod: a kwok Logs object named after the pod wins over the default.
    own = cluster.write_pod_log(tmp_path / "hello.log", "epoch 1 loss 0.5\nepoch 2 loss 0.25")
    cluster.kubectl({"kubectl": lab.kubectl}, lab.kubeconfig, "apply", "-f", "-",
                    input=json.dumps(cluster.pod_logs_manifest(namespace, pod.metadata.name, own)))
    _wait("per-pod log file", lambda: _kubectl(lab, "logs", "-n", namespace, pod.metadata.name, check=False).stdout
          == "epoch 1 loss 0.5\nepoch 2 loss 0.25\n", timeout=30)


@pytest.mark.lab_cluster
def test_nothing_listens_beyond_loopback(lab):
    pids = _lab_pids(lab)
    assert len(pids) == len(cluster.COMPONENTS)
    seen = {}
    for pid in pids:
        socks = _listening_sockets(pid)
        assert socks, f"pid {pid} listens on nothing?"
        seen[pid] = socks
    bad = {pid: s for pid, s in seen.items() if any(not a.startswith("127.0.0.1:") for a in s)}
    assert not bad, f"listening beyond loopback: {bad}"


@pytest.mark.lab_cluster
def test_control_plane_runs_in_a_loopback_only_namespace(lab):
    netns = cluster.netns_path(lab.state_dir)
    ident = _ns_ident(netns)
    assert ident != _net_ns_of(os.getpid()), "the lab's namespace is not the machine's"
    pids = _lab_pids(lab) + [_forwarder_pid(lab)]
    assert {p: _net_ns_of(p) for p in pids} == {p: ident for p in pids}
    # Nothing in it but the loopback, and no route anywhere: route lookups (they send nothing) and
    # a real connect() to the Service range fail at once, locally.
    links = _in_netns(lab, "ip", "-o", "link", "show")
    assert links.returncode == 0 and [line.split(":")[1].strip() for line in links.stdout.splitlines()] == ["lo"]
    gateway = subprocess.run(["ip", "route", "show", "default"], capture_output=True, text=True,
                             check=False).stdout.split()
    for addr in ["10.0.0.1", "10.244.0.5", "1.1.1.1", *gateway[2:3]]:
        got = _in_netns(lab, "ip", "route", "get", addr)
        assert got.returncode != 0 and "unreachable" in got.stdout.lower(), (addr, got.stdout)
    probe = _in_netns(lab, sys.executable, "-c", textwrap.dedent("""
        import errno, socket
        s = socket.socket(); s.settimeout(5)
        try:
            s.connect(("10.0.0.1", 443)); print("connected")
        except OSError as e:
            print(errno.errorcode[e.errno])
        """))
    assert probe.stdout.strip() == "ENETUNREACH", probe.stdout
    status = {r["component"]: r for r in cluster.status(lab.state_dir)}
    assert status["network-namespace"]["ok"] and status["apiserver-forwarder"]["ok"], status


@pytest.mark.lab_cluster
def test_the_machine_sees_only_the_forwarder_on_loopback(lab):
    forwarder = _forwarder_pid(lab)
    lab_pids = set(_lab_pids(lab)) | {forwarder} | set(cluster._netns_pids(cluster.netns_path(lab.state_dir)))
    mine = [(addr, pid) for addr, pid in _root_listeners() if pid in lab_pids]
    port = lab.ports["kube-apiserver"]
    assert mine == [(f"127.0.0.1:{port}", forwarder)], mine
    assert lab.server == f"https://127.0.0.1:{port}"
    # Inside, everything is on the lab's loopback too (the training operator's webhook port aside,
    # which listens on all interfaces of the namespace, i.e. its lo: see the operator test).
    inside = [line.split()[3] for line in _in_netns(lab, "ss", "-ltnH").stdout.splitlines() if line.strip()]
    assert inside and all(a.startswith("127.0.0.1:") or a.endswith(":9443") for a in inside), inside


def _webhook_config(name: str, namespace: str, client_config: dict, timeout: int = 10) -> dict:
    """A ValidatingWebhookConfiguration for ConfigMap creates in ``namespace`` only (failurePolicy Fail)."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name, "labels": TEST_LABEL},
        "webhooks": [{
            "name": f"{name}.lab.mlplat.io", "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "failurePolicy": "Fail", "timeoutSeconds": timeout,
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                       "resources": ["configmaps"]}],
            "clientConfig": client_config,
        }],
    }


def _create_configmap(api, namespace: str, labels: dict | None = None) -> tuple[bool, str, float]:
    """Create a ConfigMap; (created, error message, seconds taken)."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    body = client.V1ConfigMap(metadata=client.V1ObjectMeta(generate_name="cm-", labels=labels), data={"a": "b"})
    t0 = time.monotonic()
    try:
        client.CoreV1Api(api).create_namespaced_config_map(namespace, body)
        return True, "", time.monotonic() - t0
    except ApiException as e:
        try:
            message = json.loads(e.body)["message"]
        except (TypeError, ValueError, KeyError):
            message = str(e)
        return False, message, time.monotonic() - t0


def _refused_once_active(api, namespace: str, config: dict, timeout: float = 30) -> tuple[str, float]:
    """Dry-run creates until the webhook of ``config`` (just registered; the API server learns of
    it within a moment) refuses one (its own failure, not another error); returns that error and
    how long the refused call took. See tests/kube/lab_support.py's wait_webhook_active."""
    return wait_webhook_active(api, namespace, config, timeout=timeout)


@pytest.fixture
def webhooks(api):
    """Register webhook configurations through this; all are deleted afterwards."""
    from kubernetes import client, utils
    from kubernetes.client.rest import ApiException

    names = []

    def register(config: dict) -> None:
        utils.create_from_dict(api, config)
        names.append(config["metadata"]["name"])

    yield register
    adm = client.AdmissionregistrationV1Api(api)
    for name in names:
        try:
            adm.delete_validating_webhook_configuration(name)
        except ApiException as e:
            if e.status != 404:  # a test may have deleted it already
                raise


@pytest.mark.lab_cluster
def test_webhooks_on_service_ips_fail_fast_and_send_nothing(lab, api, namespace, webhooks):
    from kubernetes import client

    apiserver = next(c["pid"] for n, c in cluster._components(lab.cluster_dir).items() if n == "kube-apiserver")
    before = _out_no_routes(apiserver)
    # A Service that exists: the API server dials its ClusterIP (10.0.0.0/24), which has no route.
    svc = client.CoreV1Api(api).create_namespaced_service(namespace, client.V1Service(
        metadata=client.V1ObjectMeta(name="backend"),
        spec=client.V1ServiceSpec(ports=[client.V1ServicePort(port=443, target_port=8443)])))
    cluster_ip = svc.spec.cluster_ip
    assert ipaddress.ip_address(cluster_ip) in ipaddress.ip_network("10.0.0.0/8")
    config = _webhook_config(f"svc-{SUFFIX}", namespace,
                             {"service": {"name": "backend", "namespace": namespace, "port": 443}})
    webhooks(config)
    message, took = _refused_once_active(api, namespace, config)
    assert f"dial tcp {cluster_ip}:443: connect: network is unreachable" in message, message
    # fast: no route fails at once (a dial that waited would take the webhook's 10 s timeout);
    # the bound leaves room for a loaded machine
    assert took < 10, f"refused after {took:.1f}s: not fast"
    # The kernel dropped it for lack of a route (counted in the lab namespace), nothing was sent.
    assert _out_no_routes(apiserver) > before
    links = Path(f"/proc/{apiserver}/net/dev").read_text().splitlines()[2:]
    assert [line.split(":")[0].strip() for line in links] == ["lo"]


@pytest.mark.lab_cluster
def test_webhooks_on_missing_services_and_remote_urls_fail(lab, api, namespace, webhooks):
    first = _webhook_config(f"nosvc-{SUFFIX}", namespace,
                            {"service": {"name": "nowhere", "namespace": namespace, "port": 443}})
    webhooks(first)
    message, _ = _refused_once_active(api, namespace, first)
    assert 'service "nowhere" not found' in message, message
    from kubernetes import client

    client.AdmissionregistrationV1Api(api).delete_validating_webhook_configuration(f"nosvc-{SUFFIX}")
    wait_webhook_active(api, namespace, first, active=False)  # the first webhook gone
    ok, message, _ = _create_configmap(api, namespace)
    assert ok, f"creates still refused with the first webhook deleted: {message}"
    config = _webhook_config(f"url-{SUFFIX}", namespace, {"url": "https://10.0.0.77:8443/validate"})
    webhooks(config)
    message, took = _refused_once_active(api, namespace, config)
    assert "dial tcp 10.0.0.77:8443: connect: network is unreachable" in message, message
    assert took < 10, f"refused after {took:.1f}s: not fast (no route fails at once)"


BACKEND = textwrap.dedent('''
    """A validating webhook backend: allows every object but those labelled deny=yes."""
    import http.server, json, ssl, sys

    port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            labels = review["request"]["object"]["metadata"].get("labels") or {}
            allowed = labels.get("deny") != "yes"
            response = {"uid": review["request"]["uid"], "allowed": allowed}
            if not allowed:
                response["status"] = {"code": 403, "message": "denied by the lab backend"}
            body = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                               "response": response}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.HTTPServer(("127.0.0.1", port), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print("listening", flush=True)
    server.serve_forever()
''')


def _serving_cert(dir_: Path) -> tuple[Path, Path, bytes]:
    """A self-signed serving certificate for IP 127.0.0.1; (cert, key, CA bundle PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lab-webhook")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (dir_ / "tls.crt").write_bytes(pem)
    (dir_ / "tls.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))
    return dir_ / "tls.crt", dir_ / "tls.key", pem


@pytest.mark.lab_cluster
def test_url_webhook_with_a_backend_in_the_lab_namespace(lab, api, namespace, webhooks, tmp_path):
    """The pattern of the module docstring: the backend is not up yet (creates refused), then comes
    up inside the lab namespace on 127.0.0.1 (creates allowed or denied as it says)."""
    cert, key, ca = _serving_cert(tmp_path)
    (tmp_path / "backend.py").write_text(BACKEND)
    used = set(lab.ports.values())
    port = next(p for p in range(24000, 25000) if p not in used)
    config = _webhook_config(f"backend-{SUFFIX}", namespace, {
        "url": f"https://127.0.0.1:{port}/validate", "caBundle": base64.b64encode(ca).decode()})
    webhooks(config)
    message, took = _refused_once_active(api, namespace, config)
    assert f"dial tcp 127.0.0.1:{port}: connect: connection refused" in message, message
    assert took < 10, f"refused after {took:.1f}s: not fast (nothing listens: refused at once)"

    backend = cluster.netns_popen(lab.state_dir, [sys.executable, str(tmp_path / "backend.py"), str(port),
                                                  str(cert), str(key)],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert backend.stdout.readline().strip() == "listening"
        assert _net_ns_of(backend.pid) == _ns_ident(cluster.netns_path(lab.state_dir))
        # Not on the machine's loopback: only inside the lab namespace.
        assert not [a for a, pid in _root_listeners() if pid == backend.pid]
        ok, message, _ = _create_configmap(api, namespace)
        assert ok, message
        ok, message, _ = _create_configmap(api, namespace, labels={"deny": "yes"})
        assert not ok and "denied the request: denied by the lab backend" in message, message
    finally:
        backend.terminate()
        backend.communicate(timeout=10)


@pytest.mark.lab_cluster
def test_second_cluster_up_again_restarts_and_down_leave_nothing(binaries, tmp_path, lab):
    """A second cluster next to the module's (its own namespace, its own port); ``up`` again
    reuses it, a dead forwarder alone is restarted, a "rebooted" cluster is restarted in a new
    namespace, and ``down`` leaves no process, no forwarder, no mount, no namespace, even with a
    stray process started inside."""
    state = tmp_path / "second"
    nodes = [{"name": f"second-{SUFFIX}", "gpus": 1, "roles": ["worker"]}]
    try:
        info = cluster.up(state, state / "kubeconfig", nodes, binaries=binaries, progress=lambda s: None)
        assert info.server != lab.server
        netns = cluster.netns_path(state)
        ident = _ns_ident(netns)
        assert ident != _ns_ident(cluster.netns_path(lab.state_dir))
        forwarder = _forwarder_pid(info)
        stray = cluster.netns_popen(state, ["sleep", "600"])
        _wait("sleep to run in the namespace", lambda: cluster._cmdline(stray.pid)[:1] == ["sleep"], timeout=10,
              interval=0.05)
        again = cluster.up(state, state / "kubeconfig", nodes, binaries=binaries, progress=lambda s: None)
        assert again.reused and _lab_pids(again) == _lab_pids(info) and _forwarder_pid(again) == forwarder

        cluster._terminate(forwarder, "forward-apiserver")
        rows = {r["component"]: r for r in cluster.status(state)}
        assert not rows["apiserver-forwarder"]["ok"] and rows["kube-apiserver"]["ok"]
        third = cluster.up(state, state / "kubeconfig", nodes, binaries=binaries, progress=lambda s: None)
        assert third.reused and _lab_pids(third) == _lab_pids(info)
        assert _forwarder_pid(third) != forwarder and third.server == info.server
        assert _kubectl(third, "get", "nodes", "-o", "name").stdout.split() == [f"node/second-{SUFFIX}"]
        pids = _lab_pids(third) + [_forwarder_pid(third), stray.pid]

        # A reboot: every process gone and the namespace unmounted (its file stays). `up` restarts
        # the cluster in a new namespace, on the same port, with its data.
        for pid in cluster._netns_pids(netns):
            os.kill(pid, signal.SIGKILL)
        _wait("the lab's processes to die", lambda: not cluster._netns_pids(netns), timeout=20, interval=0.1)
        cluster._delete_netns(netns)
        netns.touch()
        # ... and made by a version of the lab without a namespace: no --advertise-address saved.
        saved = third.cluster_dir / "kwok.yaml"
        saved.write_text(re.sub(r"\n *- --advertise-address=127\.0\.0\.1(?=\n)", "", saved.read_text()))
        assert "--advertise-address" not in saved.read_text()
        assert not any(r["ok"] for r in cluster.status(state))
        fourth = cluster.up(state, state / "kubeconfig", nodes, binaries=binaries, progress=lambda s: None)
        assert not fourth.reused and fourth.server == info.server
        ident = _ns_ident(netns)
        assert all(_net_ns_of(pid) == ident for pid in _lab_pids(fourth) + [_forwarder_pid(fourth)])
        assert _kubectl(fourth, "get", "nodes", "-o", "name").stdout.split() == [f"node/second-{SUFFIX}"]
        stray = cluster.netns_popen(state, ["sleep", "600"])  # left for down to stop
        _wait("sleep to run in the namespace", lambda: cluster._cmdline(stray.pid)[:1] == ["sleep"], timeout=10,
              interval=0.05)
        pids += _lab_pids(fourth) + [_forwarder_pid(fourth), stray.pid]
    finally:
        cluster.down(state, progress=lambda s: None)
    stray.wait(10)
    assert not [p for p in pids if cluster._process_alive(p)]
    _assert_no_namespace_left(netns, ident)
    assert not [a for a, pid in _root_listeners() if pid in pids]
    assert {r["component"]: r["ok"] for r in cluster.status(state)} == {
        "network-namespace": False, **{c: False for c in cluster.COMPONENTS}, "apiserver-forwarder": False}
    with pytest.raises(cluster.LabClusterError, match="run lab up"):
        cluster.netns_popen(state, ["true"])
    cluster.down(state, progress=lambda s: None)  # twice is harmless


@pytest.fixture(scope="module")
def operator(lab, binaries):
    info = cluster.start_training_operator(lab.state_dir, lab.kubeconfig, binaries=binaries)
    yield info
    cluster.stop_training_operator(lab.state_dir)
    assert not cluster._process_alive(info["pid"])
    assert not cluster._process_alive(info["supervisor_pid"])


@pytest.mark.lab_cluster
def test_training_operator_runs_in_the_lab_namespace(lab, binaries, operator):
    rows = {r["component"]: r for r in cluster.status(lab.state_dir)}
    assert rows["training-operator"]["ok"], rows["training-operator"]
    ident = _ns_ident(cluster.netns_path(lab.state_dir))
    assert _net_ns_of(operator["pid"]) == ident and _net_ns_of(operator["supervisor_pid"]) == ident
    # Nothing of it on the machine's network: no listener there at all.
    assert not [a for a, pid in _root_listeners() if pid in (operator["pid"], operator["supervisor_pid"])]
    # Its health port is on the lab's loopback; its webhook listens on all interfaces of the lab
    # namespace, which has only lo.
    assert f"127.0.0.1:{operator['probe_port']}" in _listening_sockets(operator["pid"])
    links = Path(f"/proc/{operator['pid']}/net/dev").read_text().split("\n")[2:]
    assert [line.split(":")[0].strip() for line in links if line.strip()] == ["lo"]
    # Starting it again is harmless.
    again = cluster.start_training_operator(lab.state_dir, lab.kubeconfig, binaries=binaries)
    assert again["pid"] == operator["pid"]


@pytest.mark.lab_cluster
def test_pytorchjob_runs_to_success(api, operator, namespace):
    from kubernetes import client

    custom = client.CustomObjectsApi(api)

    def replica(n: int) -> dict:
        return {"replicas": n, "restartPolicy": "OnFailure", "template": {
            "metadata": {"labels": TEST_LABEL},
            "spec": {"containers": [{
                "name": "pytorch", "image": "registry.invalid/train:1", "command": ["python", "train.py"],
                "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}}

    job = {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
           "metadata": {"name": "train", "labels": TEST_LABEL},
           "spec": {"pytorchReplicaSpecs": {"Master": replica(1), "Worker": replica(1)}}}
    custom.create_namespaced_custom_object("kubeflow.org", "v1", namespace, "pytorchjobs", job)

    def succeeded():
        j = custom.get_namespaced_custom_object("kubeflow.org", "v1", namespace, "pytorchjobs", "train")
        conds = j.get("status", {}).get("conditions") or []
        return j if any(c["type"] == "Succeeded" and c["status"] == "True" for c in conds) else None

    j = _wait("PyTorchJob Succeeded", succeeded, timeout=120)
    types = [c["type"] for c in j["status"]["conditions"]]
    assert "Created" in types
    core = client.CoreV1Api(api)

    def pods_done():
        pods = core.list_namespaced_pod(namespace, label_selector="training.kubeflow.org/job-name=train").items
        return pods if pods and all(p.status.phase == "Succeeded" for p in pods) else None

    # The job succeeds when the master does; the worker finishes about then too (pod-complete stage).
    pods = _wait("master and worker pods Succeeded", pods_done, timeout=30)
    roles = sorted(p.metadata.labels["training.kubeflow.org/replica-type"] for p in pods)
    assert roles == ["master", "worker"]
    # The worker's init container (waits for the master) was completed by the pod-ready stage.
    worker = next(p for p in pods if p.metadata.labels["training.kubeflow.org/replica-type"] == "worker")
    assert worker.spec.init_containers and worker.status.init_container_statuses[0].state.terminated
