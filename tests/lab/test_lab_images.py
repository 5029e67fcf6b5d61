"""The lab's images (mlplat.lab.images), built into the real cache and run in a throwaway containerd.

The containerd is Debian's 1.6 (with runc) in its own root, state, socket and runc root under a
temporary folder, configured as the real lab nodes will be (CRI with ``restrict_oom_score_adj =
true``, cgroupfs, the lab's pause image as ``sandbox_image``). Each image is imported with ``ctr
images import`` into the ``k8s.io`` namespace and a command is run in it with ``ctr run --rm``.
At the end containerd is stopped by its own PID, leftover shims (found by this containerd's socket
in their command line) are killed by PID, mounts under the folder are unmounted, the cgroups the
containers used are removed, and the folder is deleted.

Skipped with the reason when not root, or when containerd, ctr, runc or the runc shim is missing.
The trainer image (4.7 GB: build, import, run) takes about 3-4 minutes on the 2-core development
machine, so its test runs only with ``MLPLAT_TEST_TRAINER_IMAGE=1`` (markers ``slow`` and ``torch``).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from mlplat.lab import build
from mlplat.lab import images as lab_images

CTR_NS = "k8s.io"
TRAINER_ENV = "MLPLAT_TEST_TRAINER_IMAGE"
SMALL_KEYS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy", "coredns", "pause",
              "etcd", "busybox", "alpine", "training-operator", "flannel", "flannel-cni")


def _quiet(_line: str) -> None:
    pass


# --------------------------------------------------------------------------------------------
# Built images (the real cache: built once, reused by every later run)


@pytest.fixture(scope="module")
def built() -> dict[str, lab_images.BuiltImage | str]:
    """key -> BuiltImage, or the reason it could not be built (a test using it skips)."""
    out: dict[str, lab_images.BuiltImage | str] = {}
    for key in SMALL_KEYS:
        try:
            (out[key],) = lab_images.ensure_images([key], progress=_quiet)
        except (lab_images.ImagesError, build.LabBuildError) as e:
            out[key] = str(e)
    return out


def _image(built, key: str) -> lab_images.BuiltImage:
    im = built[key]
    if isinstance(im, str):
        pytest.skip(f"{key} image not built: {im}")
    return im


def _config_and_layers(archive: Path) -> tuple[dict, dict, list[tarfile.TarInfo]]:
    """(manifest, config, members of every layer) of an image archive, read with tarfile."""
    with tarfile.open(archive) as tf:
        index = json.loads(tf.extractfile("index.json").read())

        def blob(digest: str) -> bytes:
            return tf.extractfile("blobs/sha256/" + digest.split(":", 1)[1]).read()

        manifest = json.loads(blob(index["manifests"][0]["digest"]))
        config = json.loads(blob(manifest["config"]["digest"]))
        members = []
        for layer in manifest["layers"]:
            with tarfile.open(fileobj=io.BytesIO(blob(layer["digest"]))) as lt:
                members += lt.getmembers()
    return index, config, members


# --------------------------------------------------------------------------------------------
# Names and sources


def test_training_operator_name_and_command_match_the_offline_bundle(shared: Path):
    bundle = shared / "fixtures" / "offline-bundle" / "kubeflow-manifests-26.03.tar.gz"
    if not bundle.is_file():
        pytest.skip(f"{bundle} not found")
    base = "kubeflow-manifests-26.03/applications/training-operator/upstream/"
    with tarfile.open(bundle) as tf:
        deployment = yaml.safe_load(tf.extractfile(base + "base/deployment.yaml"))
        overlays = [yaml.safe_load(tf.extractfile(base + f"overlays/{o}/kustomization.yaml"))
                    for o in ("kubeflow", "standalone")]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    repo, tag = lab_images.TRAINING_OPERATOR_IMAGE.rsplit(":", 1)
    assert container["image"] == repo
    assert container["command"] == [lab_images.TRAINING_OPERATOR_COMMAND]
    for kust in overlays:
        assert {"name": repo, "newTag": tag} in kust["images"]


def test_flannel_names_and_commands_match_the_offline_bundle(shared: Path):
    manifest = shared / "fixtures" / "offline-bundle" / "cluster-addons" / f"kube-flannel-{build.VERSIONS['flannel']}.yml"
    if not manifest.is_file():
        pytest.skip(f"{manifest} not found")
    (ds,) = [o for o in yaml.safe_load_all(manifest.read_text()) if o and o["kind"] == "DaemonSet"]
    spec = ds["spec"]["template"]["spec"]
    by_name = {c["name"]: c for c in spec["initContainers"] + spec["containers"]}
    assert by_name["install-cni-plugin"]["image"] == lab_images.FLANNEL_CNI_IMAGE
    assert by_name["install-cni-plugin"]["command"] == ["cp"] and by_name["install-cni-plugin"]["args"][1] == "/flannel"
    for name, binary in (("install-cni", "install-conf"), ("kube-flannel", "flanneld")):
        assert by_name[name]["image"] == lab_images.FLANNEL_IMAGE
        assert by_name[name]["command"] == [f"/{lab_images.FLANNEL_BIN_DIR}/{binary}"]


def test_pytorch_init_container_default_is_alpine_3_10():
    go = shutil.which("go")
    if go is None:
        pytest.skip("go not installed: cannot find the module cache")
    modcache = subprocess.run([go, "env", "GOMODCACHE"], capture_output=True, text=True, check=True).stdout.strip()
    src = Path(modcache, "github.com/kubeflow/training-operator@v1.9.4/pkg/config/config.go")
    if not src.is_file():
        pytest.skip(f"{src} not in the module cache (mlplat lab build fetches it)")
    m = re.search(r'PyTorchInitContainerImageDefault\s*=\s*"([^"]+)"', src.read_text())
    assert m and f"docker.io/library/{m.group(1)}" == lab_images.PYTORCH_INIT_IMAGE


def test_kubeadm_list_is_read_from_kubeadm(built):
    _image(built, "kube-apiserver")
    names = lab_images.kubeadm_images()
    assert names == list(lab_images.KUBEADM_IMAGES_V1_34_4)
    assert {built[k].name for k in SMALL_KEYS[:7] if not isinstance(built[k], str)} <= set(names)


def test_unknown_name_is_refused():
    with pytest.raises(lab_images.ImagesError, match="unknown image"):
        lab_images.ensure_images(["registry.example.invalid/nope:1"], progress=_quiet, kubeadm_list=[])


# --------------------------------------------------------------------------------------------
# Archives (no containerd needed)


def test_archives_hold_what_kubeadm_and_the_manifests_call(built):
    checks = {
        "kube-apiserver": ("usr/local/bin/kube-apiserver", {"Entrypoint": ["/usr/local/bin/kube-apiserver"]}),
        "kube-proxy": ("usr/local/bin/kube-proxy", {"Entrypoint": ["/usr/local/bin/kube-proxy"]}),
        "etcd": ("usr/local/bin/etcd", {"Cmd": ["/usr/local/bin/etcd"]}),
        "coredns": ("coredns", {"Entrypoint": ["/coredns"]}),
        "pause": ("catatonit", {"Entrypoint": ["/catatonit", "-P"], "User": "65535:65535"}),
        "training-operator": ("manager", {"Entrypoint": ["/manager"]}),
        "alpine": ("bin/busybox", {"Cmd": ["/bin/sh"]}),
        "flannel": ("opt/bin/flanneld", {"Entrypoint": ["/opt/bin/flanneld"]}),
        "flannel-cni": ("flannel", {"Cmd": ["/bin/sh"]}),
    }
    for key, (path, want) in checks.items():
        im = _image(built, key)
        index, config, members = _config_and_layers(im.path)
        assert index["manifests"][0]["annotations"]["io.containerd.image.name"] == im.name
        by = {m.name: m for m in members}
        assert by[path].isfile() and by[path].mode == 0o755, (key, path)
        for k, v in want.items():
            assert config["config"][k] == v, (key, k)
        assert config["architecture"] == "amd64" and config["os"] == "linux"
    # kube-proxy: the iptables-nft names and extensions
    _, _, members = _config_and_layers(_image(built, "kube-proxy").path)
    names = {m.name: m for m in members}
    for n in ("iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"):
        assert names[f"usr/sbin/{n}"].linkname == "xtables-nft-multi"
    assert "usr/lib/x86_64-linux-gnu/xtables/libxt_comment.so" in names
    assert "lib64/ld-linux-x86-64.so.2" in names


def test_etcd_image_says_which_etcd_it_holds(built):
    im = _image(built, "etcd")
    _, config, _ = _config_and_layers(im.path)
    labels = config["config"]["Labels"]
    want = build.VERSIONS["etcd"]
    assert labels[lab_images.LABEL_VERSION] == want
    assert want in labels[lab_images.LABEL_NOTE] and im.name.rsplit(":", 1)[1] in labels[lab_images.LABEL_NOTE]
    assert want in im.content and im.note == labels[lab_images.LABEL_NOTE]
    table = lab_images.images_table([im])
    assert list(table["image"]) == [im.name] and want in table["content"][0]


def test_second_call_is_cached_and_a_rebuild_is_identical(built):
    im = _image(built, "busybox")
    (again,) = lab_images.ensure_images(["busybox"], progress=_quiet)
    assert again.cached and again.digest == im.digest and again.path == im.path
    (forced,) = lab_images.ensure_images(["busybox"], force=True, progress=_quiet)
    assert not forced.cached and forced.digest == im.digest
    alpine = _image(built, "alpine")
    # alpine is busybox's layers (stored once by containerd) plus its compatibility layer (dash as
    # /bin/sh, alpine's nslookup exit status)
    base = _config_and_layers(im.path)[1]["rootfs"]["diff_ids"]
    ids = _config_and_layers(alpine.path)[1]["rootfs"]["diff_ids"]
    assert ids[:len(base)] == base and len(ids) == len(base) + 1


# --------------------------------------------------------------------------------------------
# A throwaway containerd


def _containerd_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "containerd tests need root"
    for tool, pkg in (("containerd", "containerd"), ("ctr", "containerd"), ("containerd-shim-runc-v2", "containerd"),
                      ("runc", "runc")):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install {pkg})"
    return None


def _cgroup_dirs(pid: int, parent: str) -> list[Path]:
    """Where runc puts containers whose cgroupsPath is ``parent/<id>`` (relative): under the
    cgroup of ``pid`` in every mounted hierarchy."""
    own: dict[frozenset[str], str] = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _hid, ctrls, path = line.split(":", 2)
        own[frozenset(ctrls.split(",")) if ctrls else frozenset()] = path
    known = set().union(*own)
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fstype, _src, opts = (right.split(" ") + ["", "", ""])[:3]
        mountpoint = left.split(" ")[4]
        if fstype == "cgroup2":
            key = frozenset()
        elif fstype == "cgroup":
            key = frozenset(o for o in opts.split(",") if o in known)
            if not key:
                continue
        else:
            continue
        if key in own:
            out.append(Path(mountpoint + own[key].rstrip("/")) / parent)
    return out


class Containerd:
    def __init__(self, base: Path):
        self.base = base
        self.sock = base / "c.sock"
        self.log = base / "containerd.log"
        self.proc: subprocess.Popen | None = None
        self.cgroup_parent = f"mlplat-image-test-{os.getpid()}"
        self.snapshotter = "overlayfs"
        self._n = 0
        self._made_run_dirs = [d for d in (Path("/run/containerd"), Path("/run/containerd/s")) if not d.exists()]
        self.cgroup_dirs: list[Path] = []

    def config(self) -> str:
        b = self.base
        return f"""version = 2
root = "{b}/root"
state = "{b}/state"
[grpc]
  address = "{self.sock}"
[ttrpc]
  address = "{self.sock}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "{b}/opt"
  [plugins."io.containerd.grpc.v1.cri"]
    restrict_oom_score_adj = true
    sandbox_image = "{lab_images.KUBEADM_IMAGES_V1_34_4[5]}"
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "{b}/cni"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = false
"""

    def start(self) -> None:
        (self.base / "config.toml").write_text(self.config())
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(["containerd", "--config", str(self.base / "config.toml")],
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"containerd exited rc={self.proc.returncode}: {self.log.read_text()[-2000:]}")
            if self.sock.exists() and self.ctr("version", check=False).returncode == 0:
                break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"containerd did not answer in 60 s: {self.log.read_text()[-2000:]}")
        self.cgroup_dirs = _cgroup_dirs(self.proc.pid, self.cgroup_parent)
        plugins = self.ctr("plugins", "ls").stdout
        if not re.search(r"io\.containerd\.snapshotter\.v1\s+overlayfs\s+\S+\s+ok", plugins):
            self.snapshotter = "native"  # e.g. the folder is on overlayfs, which cannot be an upperdir

    def ctr(self, *args: str, check: bool = True, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
        cmd = ["ctr", "-a", str(self.sock), "-n", CTR_NS, *args]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
        if check and out.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} -> rc={out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        return out

    def import_image(self, archive: Path, timeout: float = 600) -> None:
        self.ctr("images", "import", "--snapshotter", self.snapshotter, str(archive), timeout=timeout)

    def _run_args(self, cid: str, mounts=(), caps=(), with_ns=()) -> list[str]:
        args = ["run", "--snapshotter", self.snapshotter, "--fifo-dir", str(self.base / "fifo"),
                "--runc-root", str(self.base / "runc"), "--cgroup", f"{self.cgroup_parent}/{cid}"]
        for src, dst in mounts:
            args += ["--mount", f"type=bind,src={src},dst={dst},options=rbind:ro"]
        for cap in caps:
            args += ["--cap-add", cap]
        for ns in with_ns:
            args += ["--with-ns", ns]
        return args

    def run(self, image: str, *command: str, timeout: float = 300, **opts) -> subprocess.CompletedProcess:
        self._n += 1
        cid = f"t{self._n}"
        return self.ctr(*self._run_args(cid, **opts), "--rm", image, cid, *command, check=False, timeout=timeout)

    def start_detached(self, image: str, *command: str, **opts) -> tuple[str, int]:
        self._n += 1
        cid = f"d{self._n}"
        self.ctr(*self._run_args(cid, **opts), "-d", image, cid, *command)
        for line in self.ctr("tasks", "ls").stdout.splitlines()[1:]:
            f = line.split()
            if f and f[0] == cid:
                return cid, int(f[1])
        raise AssertionError(f"task {cid} not listed")

    def task_status(self, cid: str) -> str:
        for line in self.ctr("tasks", "ls").stdout.splitlines()[1:]:
            f = line.split()
            if f and f[0] == cid:
                return f[2]
        return "GONE"

    def remove(self, cid: str) -> None:
        self.ctr("tasks", "kill", "-s", "SIGKILL", cid, check=False)
        for _ in range(50):
            if self.task_status(cid) in ("STOPPED", "GONE"):
                break
            time.sleep(0.1)
        self.ctr("tasks", "rm", "-f", cid, check=False)
        self.ctr("containers", "rm", cid, check=False)

    # ---- teardown: leave nothing behind
    def _our_pids(self) -> list[int]:
        needle = str(self.sock).encode()
        pids = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    if needle in (d / "cmdline").read_bytes():
                        pids.append(int(d.name))
                except OSError:
                    continue
        return pids

    def stop(self) -> list[str]:
        """Stop everything; return what had to be cleaned up by force (for the test to report)."""
        forced = []
        if self.proc and self.proc.poll() is None:
            for cid in self.ctr("containers", "ls", "-q", check=False).stdout.split():
                forced.append(f"container {cid}")
                self.remove(cid)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                forced.append("containerd needed SIGKILL")
                self.proc.kill()
                self.proc.wait()
        for pid in self._our_pids():  # shims of this containerd (their command line names its socket)
            forced.append(f"process {pid}")
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        mounts = [line.split(" ")[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        for mp in reversed(mounts):
            mp = mp.encode().decode("unicode_escape")
            if mp == str(self.base) or mp.startswith(str(self.base) + "/"):
                forced.append(f"mount {mp}")
                subprocess.run(["umount", "-l", mp], check=False, capture_output=True)
        for d in self.cgroup_dirs:
            if d.is_dir():
                for sub, _dirs, _files in sorted(os.walk(d), key=lambda t: -len(t[0])):
                    try:
                        os.rmdir(sub)
                    except OSError as e:
                        forced.append(f"cgroup {sub}: {e}")
        shutil.rmtree(self.base, ignore_errors=True)
        for d in reversed(self._made_run_dirs):  # shim sockets live in /run/containerd/s in 1.6
            try:
                d.rmdir()
            except OSError:
                pass
        return forced


@pytest.fixture(scope="module")
def containerd():
    reason = _containerd_unavailable()
    if reason:
        pytest.skip(reason)
    base = Path(tempfile.mkdtemp(prefix="mlplat-ctrd-"))
    c = Containerd(base)
    try:
        c.start()
        yield c
    finally:
        forced = c.stop()
        leftovers = [p for p in c._our_pids()] + [str(d) for d in c.cgroup_dirs if d.exists()]
        assert not base.exists() and not leftovers, f"containerd test left {leftovers} (forced: {forced})"


@pytest.fixture(scope="module")
def imported(containerd, built) -> dict[str, str]:
    """key -> image name, for every small image that was built and imported."""
    out = {}
    for key in SMALL_KEYS:
        im = built[key]
        if not isinstance(im, str):
            containerd.import_image(im.path)
            out[key] = im.name
    listed = set(containerd.ctr("images", "ls", "-q").stdout.split())
    assert set(out.values()) <= listed
    return out


def _name(imported, built, key: str) -> str:
    if key not in imported:
        _image(built, key)  # skips with the reason
    return imported[key]


VERSION_CHECKS = {
    "kube-apiserver": (["kube-apiserver", "--version"], "Kubernetes v1.34.4"),
    "kube-controller-manager": (["kube-controller-manager", "--version"], "Kubernetes v1.34.4"),
    "kube-scheduler": (["kube-scheduler", "--version"], "Kubernetes v1.34.4"),
    "kube-proxy": (["kube-proxy", "--version"], "Kubernetes v1.34.4"),
    "coredns": (["/coredns", "-version"], "CoreDNS-1.12.1"),
    "etcd": (["etcd", "--version"], f"etcd Version: {build.VERSIONS['etcd'].lstrip('v')}"),
    "training-operator": (["/manager", "--help"], "pytorch-init-container-image"),
    "busybox": (["sh", "-c", "which sh nslookup wget httpd nc sleep cat seq; nslookup 2>&1 | head -1"], "BusyBox v"),
    # training-operator's init container: sh -c with seq, nslookup and sleep
    "alpine": (["sh", "-c", "for i in $(seq 1); do which nslookup sleep; done"], "/usr/bin/nslookup"),
    # flanneld is a cgo build: it runs only if the image carries its libc and loader
    "flannel": (["/opt/bin/flanneld", "--version"], build.VERSIONS["flannel"]),
    # the init container's cp, and the plugin answering CNI's VERSION command
    "flannel-cni": (["sh", "-c", "cp /flannel /tmp/f && CNI_COMMAND=VERSION /tmp/f </dev/null"], '"0.3.1"'),
}


@pytest.mark.slow
@pytest.mark.parametrize("key", list(VERSION_CHECKS))
def test_command_runs_in_image(containerd, imported, built, key):
    name = _name(imported, built, key)
    cmd, want = VERSION_CHECKS[key]
    out = containerd.run(name, *cmd)
    text = out.stdout + out.stderr
    assert out.returncode == 0 and want in text, text[-2000:]
    if key == "busybox":
        assert all(f"/{a}" in text for a in ("sh", "nslookup", "wget", "httpd", "nc", "sleep", "cat")), text


@pytest.mark.slow
def test_pause_sandbox_and_iptables_in_kube_proxy(containerd, imported, built, tmp_path):
    """pause runs (as 65535) like a pod sandbox; containers of the kube-proxy image join its network
    namespace, load rules with match extensions, and iptables-save shows them."""
    pause = _name(imported, built, "pause")
    proxy = _name(imported, built, "kube-proxy")
    cid, pid = containerd.start_detached(pause)
    try:
        assert containerd.task_status(cid) == "RUNNING"
        status = Path(f"/proc/{pid}/status").read_text()
        assert re.search(r"^Uid:\s+65535\b", status, re.MULTILINE), status
        rules = tmp_path / "rules"
        rules.write_text("*filter\n:MLPLAT-TEST - [0:0]\n"
                         "-A INPUT -p tcp -m comment --comment mlplat-test -m conntrack --ctstate NEW "
                         "-m multiport --dports 80,443 -j MLPLAT-TEST\nCOMMIT\n"
                         "*nat\n-A PREROUTING -m addrtype --dst-type LOCAL -j RETURN\nCOMMIT\n")
        netns = f"network:/proc/{pid}/ns/net"
        out = containerd.run(proxy, "iptables-restore", "/rules", mounts=[(rules, "/rules")],
                             caps=["CAP_NET_ADMIN"], with_ns=[netns])
        assert out.returncode == 0, out.stderr
        out = containerd.run(proxy, "iptables-save", caps=["CAP_NET_ADMIN"], with_ns=[netns])
        assert out.returncode == 0, out.stderr
        assert "-m comment --comment mlplat-test" in out.stdout and ":MLPLAT-TEST" in out.stdout, out.stdout
        assert "--dst-type LOCAL" in out.stdout
        out = containerd.run(proxy, "iptables", "--version")
        assert "nf_tables" in out.stdout
        # catatonit -P ends on SIGTERM
        containerd.ctr("tasks", "kill", "-s", "SIGTERM", cid)
        for _ in range(100):
            if containerd.task_status(cid) == "STOPPED":
                break
            time.sleep(0.1)
        assert containerd.task_status(cid) == "STOPPED"
    finally:
        containerd.remove(cid)


# --------------------------------------------------------------------------------------------
# The trainer image (opt-in: minutes and GBs)

TORCHRUN_SCRIPT = ("import torch, torch.distributed as d; d.init_process_group('gloo'); "
                   "t = torch.ones(1) * (d.get_rank() + 1); d.all_reduce(t); "
                   "print('rank', d.get_rank(), 'sum', t.item()); d.destroy_process_group()")


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.skipif(os.environ.get(TRAINER_ENV) != "1",
                    reason=f"the trainer image test takes minutes and ~15 GB of disk: set {TRAINER_ENV}=1")
def test_trainer_image_imports_torch_and_runs_torchrun(containerd, tmp_path):
    timings = {}
    t0 = time.monotonic()
    try:
        (im,) = lab_images.ensure_images(["trainer"], progress=_quiet)
    except lab_images.MissingInput as e:
        pytest.skip(str(e))
    timings["build"] = time.monotonic() - t0
    t0 = time.monotonic()
    containerd.import_image(im.path, timeout=1200)
    timings["import"] = time.monotonic() - t0
    t0 = time.monotonic()
    out = containerd.run(im.name, "python3", "-c", "import torch, sys; print(torch.__version__, sys.prefix); "
                         "print(torch.ones(2, 2).sum().item())")
    timings["import torch"] = time.monotonic() - t0
    assert out.returncode == 0 and "/usr/local" in out.stdout and "4.0" in out.stdout, out.stderr[-3000:]
    assert "NumPy" not in out.stderr
    # As the kubelet does, give the container an /etc/hosts naming its host name (c10d resolves it).
    hosts = tmp_path / "hosts"
    hosts.write_text(f"127.0.0.1\tlocalhost\n127.0.0.1\t{socket.gethostname()}\n")
    t0 = time.monotonic()
    out = containerd.run(im.name, "torchrun", "--standalone", "--nproc-per-node", "2", "--no-python",
                         "python3", "-c", TORCHRUN_SCRIPT, mounts=[(hosts, "/etc/hosts")], timeout=600)
    timings["torchrun"] = time.monotonic() - t0
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert "rank 0 sum 3.0" in out.stdout and "rank 1 sum 3.0" in out.stdout
    out = containerd.run(im.name, "which", "python3", "torchrun", "sh")
    assert out.stdout.split() == ["/usr/local/bin/python3", "/usr/local/bin/torchrun", "/bin/sh"]
    print(f"trainer image {im.size / 1e9:.2f} GB (build {im.seconds:.0f}s when built): "
          + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
