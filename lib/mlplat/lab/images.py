"""The lab's container images, built locally as OCI archives for ``ctr -n k8s.io images import``.

Real lab nodes (kubeadm, containerd 1.6, runc) never pull: every image they run is built here from
binaries the lab builds (:mod:`mlplat.lab.build`) or that Debian packages, named exactly as
kubeadm and the manifests ask (``imagePullPolicy: IfNotPresent`` then finds them):

- kubeadm's list, read at run time from the built kubeadm (``kubeadm config images list
  --kubernetes-version <ver>``): kube-apiserver, kube-controller-manager, kube-scheduler and etcd
  (the static binary at ``/usr/local/bin/<name>``: kubeadm's static pods call them by name),
  kube-proxy (``/usr/local/bin/kube-proxy`` plus this machine's iptables-nft userland, its
  extensions and their libraries), coredns (``/coredns``, ``ENTRYPOINT ["/coredns"]``) and pause
  (Debian's static ``catatonit -P``). The etcd image carries kubeadm's tag but the etcd the lab
  builds; its labels, annotations and :attr:`BuiltImage.content` say so.
- ``docker.io/library/busybox:1.36.1`` and ``docker.io/library/alpine:3.10`` (training-operator
  v1.9.4's ``PyTorchInitContainerImageDefault``): Debian's busybox-static with its applet links.
  Neither is the upstream image; both say which busybox they hold.
- the training operator under the name and path of Kubeflow 26.03's manifests
  (``applications/training-operator/upstream``: image ``ghcr.io/kubeflow/training-v1/
  training-operator:v1-3f15cb8``, ``command: [/manager]``), holding the lab's v1.9.4 build.
- flannel under the names of the offline bundle's ``kube-flannel-v0.28.9.yml``: the flannel image
  (``/opt/bin/flanneld`` and ``/opt/bin/install-conf`` built by the lab, this machine's iptables-nft
  and the libraries flanneld links) and the flannel CNI plugin image (``/flannel``, the plugin of
  containernetworking/plugins v0.9.1, not flannel-io/cni-plugin, plus busybox for the init
  container's ``cp``); both labels say so.
- ``localhost/mlplat/trainer:torch-<version>``: python3 and torch from this Python environment
  (``sys.executable``, its stdlib, torch and what torch requires except triton, the libraries all of
  it links), ``python3`` and ``torchrun`` in ``/usr/local/bin``, busybox ``sh``.

Archives live in ``${MLPLAT_CACHE:-~/.cache/mlplat}/images/<name>.tar`` with a ``<name>.json``
stamp. The stamp holds a key over every input (image recipe version, the sha256 of each binary and
library copied in, Debian package versions, torch's and its dependencies' RECORD digests, the
stdlib's file list); a valid stamp and archive skip the build. :func:`ensure_images` returns
:class:`BuiltImage` records; :func:`images_table` shows them as a DataFrame.

Command line: ``python -m mlplat.lab.images [--force] [NAME ...]``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mlplat.images import oci
from mlplat.kubeflow.source import file_sha256
from mlplat.lab import build

# Bump when a recipe below changes what goes into an image: every cache key includes it.
RECIPE_VERSION = "1"

K8S_VERSION = build.VERSIONS["kubernetes"]

# kubeadm v1.34.4's `config images list --kubernetes-version v1.34.4`, read from the built kubeadm
# on 2026-11-28. Only a fallback for tests and documentation: ensure_images asks kubeadm.
KUBEADM_IMAGES_V1_34_4 = (
    "registry.k8s.io/kube-apiserver:v1.34.4",
    "registry.k8s.io/kube-controller-manager:v1.34.4",
    "registry.k8s.io/kube-scheduler:v1.34.4",
    "registry.k8s.io/kube-proxy:v1.34.4",
    "registry.k8s.io/coredns/coredns:v1.12.1",
    "registry.k8s.io/pause:3.10.1",
    "registry.k8s.io/etcd:3.6.5-0",
)

# Kubeflow manifests 26.03, applications/training-operator/upstream: base/deployment.yaml names
# the image ghcr.io/kubeflow/training-v1/training-operator with `command: [/manager]`, and both
# overlays (standalone, kubeflow) set `newTag: v1-3f15cb8`. tests/lab/test_lab_images.py reads
# the offline bundle and checks these two constants.
TRAINING_OPERATOR_IMAGE = "ghcr.io/kubeflow/training-v1/training-operator:v1-3f15cb8"
TRAINING_OPERATOR_COMMAND = "/manager"

# training-operator v1.9.4, pkg/config/config.go: PyTorchInitContainerImageDefault = "alpine:3.10"
# (read in the Go module cache). Its init container runs `sh -c` with seq, nslookup and sleep.
PYTORCH_INIT_IMAGE = "docker.io/library/alpine:3.10"
BUSYBOX_IMAGE = "docker.io/library/busybox:1.36.1"
# The offline bundle's cluster-addons/kube-flannel-v0.28.9.yml: kube-flannel-ds runs flanneld as
# /opt/bin/flanneld, its install-cni init container /opt/bin/install-conf (flannel image), and its
# install-cni-plugin init container `cp -f /flannel /opt/cni/bin/flannel` (CNI plugin image).
# tests/lab/test_lab_images.py reads the bundle and checks these.
FLANNEL_IMAGE = "ghcr.io/flannel-io/flannel:v0.28.9"
FLANNEL_CNI_IMAGE = "ghcr.io/flannel-io/flannel-cni-plugin:v1.9.1-flannel3"
FLANNEL_BIN_DIR = "opt/bin"
TRAINER_REPOSITORY = "localhost/mlplat/trainer"

# Which binary each kubeadm image holds (by the last component of its repository).
_KUBEADM_BINARY = {
    "kube-apiserver": "kube-apiserver",
    "kube-controller-manager": "kube-controller-manager",
    "kube-scheduler": "kube-scheduler",
    "kube-proxy": "kube-proxy",
    "coredns": "coredns",
    "etcd": "etcd",
    "pause": None,
}
KEYS = (*_KUBEADM_BINARY, "busybox", "alpine", "training-operator", "flannel", "flannel-cni", "trainer")

# Distributions torch lists as requirements that `import torch` does not need.
TRAINER_SKIP_DISTS = {"triton"}
# Not required by torch, but without it every `import torch` warns "Failed to initialize NumPy"
# and Tensor.numpy() fails; about 40 MB next to 4.6 GB. Included when installed.
TRAINER_EXTRA_DISTS = ("numpy",)
# Libraries the loader may ask for that come from the host's NVIDIA runtime, never from an image.
HOST_DRIVER_LIBS = ("libcuda.so.1", "libnvidia-ml.so.1")
# Parts of the stdlib no training job imports (and _tkinter would drag in X11).
_STDLIB_SKIP = {"site-packages", "test", "idlelib", "tkinter", "turtledemo", "ensurepip", "__phello__"}

PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LABEL_CONTENT = "io.mlplat.image.content"
LABEL_NOTE = "io.mlplat.image.note"
LABEL_VERSION = "org.opencontainers.image.version"

Progress = Callable[[str], None]


class ImagesError(RuntimeError):
    """An image could not be built; the message says why."""


class MissingInput(ImagesError):
    """A binary or file an image needs is not there (e.g. a lab component not built yet)."""


@dataclass(frozen=True)
class BuiltImage:
    """One image archive in the cache."""

    key: str  # short name: kube-apiserver, pause, busybox, trainer, ...
    name: str  # full reference, what containerd stores
    path: Path
    size: int
    content: str  # what is really inside, versions included
    digest: str  # manifest digest
    cache_key: str
    seconds: float  # how long the build that wrote the archive took
    cached: bool  # True when this call reused the archive
    note: str = ""
    layers: int = 0


@dataclass
class _Spec:
    key: str
    name: str
    content: str
    note: str
    inputs: Callable[[], dict]
    build: Callable[[], tuple[list[oci.Layer], oci.ImageConfig]]
    version: str = ""


# ----------------------------------------------------------------------------------------------
# Cache


def images_dir() -> Path:
    """``${MLPLAT_CACHE:-~/.cache/mlplat}/images``."""
    return build.cache_root() / "images"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def archive_path(name: str) -> Path:
    return images_dir() / f"{_slug(name)}.tar"


def _key(spec: _Spec) -> str:
    blob = json.dumps({"recipe": RECIPE_VERSION, "name": spec.name, "key": spec.key, "inputs": spec.inputs()},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _read_stamp(name: str) -> dict | None:
    try:
        return json.loads(archive_path(name).with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None


def _valid(name: str, key: str) -> tuple[bool, str]:
    stamp = _read_stamp(name)
    if stamp is None:
        return False, "not built"
    if stamp.get("cache_key") != key:
        return False, "inputs changed"
    path = archive_path(name)
    try:
        size = path.stat().st_size
    except OSError:
        return False, "archive missing"
    if size != stamp.get("size"):
        return False, "archive size differs from its stamp"
    return True, "ok"


def _lock(progress: Progress):
    return build.file_lock(images_dir() / ".lock", progress, "lab images")


# ----------------------------------------------------------------------------------------------
# Inputs from this machine


def _dpkg_version(package: str) -> str:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def _host_tool(name: str, package: str) -> Path:
    for d in ("/usr/bin", "/bin", "/usr/sbin", "/sbin"):
        p = Path(d, name)
        if p.is_file():
            return p.resolve()
    raise MissingInput(f"lab images | {name} not found: install the Debian package {package} (apt-get install {package})")


def _busybox() -> Path:
    return _host_tool("busybox", "busybox-static")


def _busybox_version(bb: Path) -> str:
    out = subprocess.run([str(bb)], capture_output=True, text=True, timeout=30)
    m = re.search(r"BusyBox v(\S+)", out.stdout + out.stderr)
    return m.group(1) if m else "unknown"


def _files_inputs(files: dict[str, Path]) -> dict[str, str]:
    return {p: file_sha256(h) for p, h in sorted(files.items())}


# ----------------------------------------------------------------------------------------------
# Layers shared by several images

_PASSWD = """root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/usr/sbin/nologin
"""
_GROUP = """root:x:0:
nogroup:x:65534:
nonroot:x:65532:
"""
_HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"


def _base_layer() -> oci.Layer:
    """/etc basics every image gets (the kubelet mounts its own hosts and resolv.conf over them)."""
    return oci.Layer([
        oci.content("etc/passwd", _PASSWD),
        oci.content("etc/group", _GROUP),
        oci.content("etc/hosts", _HOSTS),
        oci.content("etc/nsswitch.conf", "passwd: files\ngroup: files\nhosts: files dns\n"),
        oci.directory("tmp", 0o1777),
        oci.directory("root", 0o700),
        oci.directory("home/nonroot", 0o755),
    ], comment="mlplat base: /etc/passwd, group, hosts, nsswitch.conf; /tmp")


def _busybox_layer() -> oci.Layer:
    bb = _busybox()
    out = subprocess.run([str(bb), "--list-full"], capture_output=True, text=True, timeout=30)
    if out.returncode != 0 or not out.stdout.strip():
        raise ImagesError(f"lab images | `{bb} --list-full` failed: {out.stderr.strip()}")
    entries = [oci.file("bin/busybox", bb, 0o755)]
    for applet in sorted(set(out.stdout.split())):
        if applet.strip("/") != "bin/busybox":
            entries.append(oci.symlink(applet, "/bin/busybox"))
    return oci.Layer(entries, comment=f"busybox {_busybox_version(bb)} (Debian busybox-static) with its applet links")


def _static_binary_layer(image_path: str, binary: Path) -> oci.Layer:
    return oci.Layer([oci.file(image_path, binary, 0o755)], comment=f"{binary.name} at /{image_path.lstrip('/')}")


_IPTABLES_NAMES = (
    "iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore",
    "iptables-nft", "iptables-nft-save", "iptables-nft-restore",
    "ip6tables-nft", "ip6tables-nft-save", "ip6tables-nft-restore",
)
_XTABLES_DIR = Path("/usr/lib/x86_64-linux-gnu/xtables")


def _iptables_files() -> tuple[Path, list[Path]]:
    multi = _host_tool("xtables-nft-multi", "iptables")
    if not _XTABLES_DIR.is_dir():
        raise MissingInput(f"lab images | {_XTABLES_DIR} is missing: install the Debian package iptables")
    return multi, sorted(_XTABLES_DIR.glob("*.so"))


def _iptables_layer() -> oci.Layer:
    """iptables-nft as on this machine: xtables-nft-multi, its names, extensions and libraries."""
    multi, exts = _iptables_files()
    closure = oci.library_closure([multi, *exts], provided=[_XTABLES_DIR])
    entries = [oci.file("usr/sbin/xtables-nft-multi", multi, 0o755)]
    entries += [oci.symlink(f"usr/sbin/{n}", "xtables-nft-multi") for n in _IPTABLES_NAMES]
    entries += oci.tree(str(_XTABLES_DIR), _XTABLES_DIR)
    entries += oci.closure_entries(closure)
    for f in ("/etc/protocols", "/etc/services", "/etc/ethertypes"):
        if Path(f).is_file():
            entries.append(oci.file(f, f, 0o644))
    return oci.Layer(entries, comment=f"iptables {_dpkg_version('iptables')} (nf_tables) from Debian, with libraries")


def _iptables_inputs() -> dict:
    multi, exts = _iptables_files()
    closure = oci.library_closure([multi, *exts], provided=[_XTABLES_DIR])
    files = {"xtables-nft-multi": multi, **{f"xtables/{p.name}": p for p in exts}, **closure}
    return {"iptables": _dpkg_version("iptables"), "files": _files_inputs(files)}


# ----------------------------------------------------------------------------------------------
# Image specs


def _labels(content: str, version: str, note: str = "") -> dict[str, str]:
    labels = {LABEL_CONTENT: content, LABEL_VERSION: version}
    if note:
        labels[LABEL_NOTE] = note
    return labels


def kubeadm_images(kubeadm: Path | None = None, version: str = K8S_VERSION) -> list[str]:
    """kubeadm's image list for ``version``, from the built kubeadm (``--kubernetes-version`` is
    passed, so kubeadm never looks up ``stable-1`` on the network)."""
    if kubeadm is None:
        kubeadm = _Binaries(None, lambda s: None)("kubeadm")
    out = subprocess.run([str(kubeadm), "config", "images", "list", "--kubernetes-version", version],
                         capture_output=True, text=True, timeout=120)
    names = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    if out.returncode != 0 or not names:
        raise ImagesError(f"lab images | `kubeadm config images list` failed (rc={out.returncode}): "
                          f"{(out.stderr or out.stdout).strip()[-500:]}")
    return names


def _kubeadm_key(name: str) -> str:
    repo = name.rsplit(":", 1)[0]
    key = repo.rsplit("/", 1)[-1]
    if key not in _KUBEADM_BINARY:
        raise ImagesError(f"lab images | kubeadm lists {name}, which the lab has no recipe for")
    return key


def _binary_version(binary: Path, args: tuple[str, ...]) -> str:
    try:
        out = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({e})"
    text = (out.stdout + out.stderr).strip()
    return text.splitlines()[0].strip() if text else "unknown"


def _kubeadm_spec(name: str, binaries: Callable[[str], Path]) -> _Spec:
    key = _kubeadm_key(name)
    tag = name.rsplit(":", 1)[1]
    if key == "pause":
        cat = _host_tool("catatonit", "catatonit")
        ver = _dpkg_version("catatonit")
        content = f"catatonit {ver} (Debian, static) as `/catatonit -P`"
        note = "not the upstream pause binary: catatonit in pause mode (sleeps, reaps, exits on SIGTERM/SIGINT)"
        return _Spec(
            key, name, content, note,
            inputs=lambda: {"catatonit": ver, "files": _files_inputs({"catatonit": cat})},
            build=lambda: ([_base_layer(), _static_binary_layer("catatonit", cat)],
                           oci.ImageConfig(entrypoint=["/catatonit", "-P"], user="65535:65535",
                                           labels=_labels(content, ver, note))),
            version=ver,
        )
    binary_name = _KUBEADM_BINARY[key]
    if key == "etcd":
        version = build.VERSIONS["etcd"]
        content = f"etcd {version} (mlplat.lab.build) at /usr/local/bin/etcd"
        note = (f"the tag {tag} is the name kubeadm {K8S_VERSION} asks for; the binary is etcd {version} "
                f"built by the lab (no etcdctl or etcdutl in the image)")
    elif key == "coredns":
        version = build.VERSIONS.get("coredns", "")
        content = f"coredns {version or '(version from its build)'} (mlplat.lab.build) at /coredns"
        note = "" if version.lstrip("v") == tag.lstrip("v") else f"the tag {tag} is kubeadm's name for CoreDNS"
    else:
        version = K8S_VERSION
        content = f"{binary_name} {version} (mlplat.lab.build) at /usr/local/bin/{binary_name}"
        note = "" if tag == version else f"the tag {tag} differs from the built version {version}"
    if key == "kube-proxy":
        content += f"; iptables {_dpkg_version('iptables')} (nf_tables) from Debian"

    def inputs() -> dict:
        b = binaries(binary_name)
        d = {"binary": file_sha256(b), "version": version}
        if key == "kube-proxy":
            d["iptables"] = _iptables_inputs()
        return d

    def build_() -> tuple[list[oci.Layer], oci.ImageConfig]:
        b = binaries(binary_name)
        said = _binary_version(b, ("-version",) if key == "coredns" else ("--version",))
        labels = _labels(content + f" (says: {said})", version or said, note)
        if key == "coredns":
            return ([_base_layer(), _static_binary_layer("coredns", b)],
                    oci.ImageConfig(entrypoint=["/coredns"], labels=labels,
                                    exposed_ports=["53/tcp", "53/udp", "8080/tcp", "8181/tcp", "9153/tcp"]))
        layers = [_base_layer()]
        if key == "kube-proxy":
            layers.append(_iptables_layer())
        layers.append(_static_binary_layer(f"usr/local/bin/{binary_name}", b))
        cfg = oci.ImageConfig(labels=labels)
        if key == "etcd":
            cfg.cmd = ["/usr/local/bin/etcd"]
        else:
            cfg.entrypoint = [f"/usr/local/bin/{binary_name}"]
        return layers, cfg

    return _Spec(key, name, content, note, inputs, build_, version=version)


# alpine:3.10's nslookup (busybox 1.30) exits 0 once the name resolves under one of the search
# domains, which the PyTorch init container's `until nslookup <master>` loop relies on; Debian's
# busybox 1.35 exits 1 when any search-domain variant fails (NXDOMAIN), so the loop would never end.
ALPINE_NSLOOKUP = """#!/bin/busybox sh
# mlplat lab: alpine:3.10's nslookup exit status over Debian's busybox (see mlplat.lab.images).
out=$(/bin/busybox nslookup "$@" 2>&1); rc=$?
printf '%s\\n' "$out"
[ "$rc" -eq 0 ] && exit 0
printf '%s\\n' "$out" | /bin/busybox grep -q '^Name:' && exit 0
exit "$rc"
"""
DASH = Path("/usr/bin/dash")


def _alpine_compat_layer() -> oci.Layer:
    """/bin/sh as dash (busybox's sh runs its own nslookup applet, never a PATH entry) and
    /bin/nslookup with alpine 3.10's exit status."""
    if not DASH.is_file():
        raise MissingInput(f"lab images | {DASH} is missing: install the dash package")
    # Over busybox's own applet links (nslookup is usr/bin/nslookup there, ahead of /bin on PATH).
    applets = subprocess.run([str(_busybox()), "--list-full"], capture_output=True, text=True, timeout=30).stdout.split()
    where = [a for a in applets if a.rsplit("/", 1)[-1] == "nslookup"] or ["bin/nslookup"]
    entries = [oci.file("bin/sh", DASH, 0o755)] + [oci.content(w, ALPINE_NSLOOKUP, 0o755) for w in where]
    entries += oci.closure_entries(oci.library_closure([DASH]))
    return oci.Layer(entries, comment="alpine 3.10 compatibility: dash as /bin/sh, nslookup's exit status")


def _busybox_spec(key: str, name: str) -> _Spec:
    bb = _busybox()
    deb = _dpkg_version("busybox-static")
    ver = _busybox_version(bb)
    tag = name.rsplit(":", 1)[1]
    files = {"busybox": bb}
    if key == "alpine":
        content = (f"busybox {ver} (Debian busybox-static {deb}) with its applet links, dash as /bin/sh and an "
                   "nslookup with alpine 3.10's exit status; not Alpine")
        note = (f"stands in for {name}, training-operator v1.9.4's PyTorch init container image "
                "(sh -c with seq, nslookup, sleep)")
        cmd = ["/bin/sh"]
        files["dash"] = DASH
    else:
        content = f"busybox {ver} (Debian busybox-static {deb}) with its applet links"
        note = f"the tag {tag} is the name the manifests use; the binary is busybox {ver}"
        cmd = ["sh"]

    def layers():
        out = [_base_layer(), _busybox_layer()]
        return out + [_alpine_compat_layer()] if key == "alpine" else out

    return _Spec(
        key, name, content, note,
        inputs=lambda: {"busybox-static": deb, "files": _files_inputs(files),
                        **({"nslookup": hashlib.sha256(ALPINE_NSLOOKUP.encode()).hexdigest(), "compat": 2}
                           if key == "alpine" else {})},
        build=lambda: (layers(), oci.ImageConfig(cmd=cmd, labels=_labels(content, ver, note))),
        version=ver,
    )


def _training_operator_spec(binaries: Callable[[str], Path]) -> _Spec:
    version = build.VERSIONS["training-operator"]
    tag = TRAINING_OPERATOR_IMAGE.rsplit(":", 1)[1]
    content = f"training-operator.v1 {version} (mlplat.lab.build) as {TRAINING_OPERATOR_COMMAND}"
    note = (f"the tag {tag} is the name Kubeflow 26.03's manifests use (an upstream commit build); "
            f"the binary is the lab's {version} build")

    def build_():
        b = binaries("training-operator.v1")
        return ([_base_layer(), _static_binary_layer(TRAINING_OPERATOR_COMMAND.lstrip("/"), b)],
                oci.ImageConfig(entrypoint=[TRAINING_OPERATOR_COMMAND], working_dir="/",
                                labels=_labels(content, version, note)))

    return _Spec(
        "training-operator", TRAINING_OPERATOR_IMAGE, content, note,
        inputs=lambda: {"binary": file_sha256(binaries("training-operator.v1")), "version": version},
        build=build_, version=version,
    )


def _flannel_spec(binaries: Callable[[str], Path]) -> _Spec:
    version = build.VERSIONS["flannel"]
    tag = FLANNEL_IMAGE.rsplit(":", 1)[1]
    content = (f"flanneld and install-conf {version} (mlplat.lab.build) in /{FLANNEL_BIN_DIR}; "
               f"iptables {_dpkg_version('iptables')} (nf_tables) from Debian")
    note = "" if tag == version else f"the tag {tag} differs from the built version {version}"

    def files() -> dict[str, Path]:
        return {"flanneld": binaries("flanneld"), "install-conf": binaries("install-conf")}

    def build_():
        f = files()
        # flanneld is built with cgo (as upstream): its libc and loader come along.
        closure = oci.library_closure([f["flanneld"]])
        entries = [oci.file(f"{FLANNEL_BIN_DIR}/{n}", b, 0o755) for n, b in f.items()]
        entries += oci.closure_entries(closure)
        said = _binary_version(f["flanneld"], ("--version",))
        layers = [_base_layer(), _iptables_layer(),
                  oci.Layer(entries, comment=f"flanneld {said} and install-conf in /{FLANNEL_BIN_DIR}, with libraries")]
        return layers, oci.ImageConfig(entrypoint=[f"/{FLANNEL_BIN_DIR}/flanneld"],
                                       labels=_labels(content + f" (says: {said})", version, note))

    def inputs() -> dict:
        f = files()
        return {"version": version, "files": _files_inputs({**f, **oci.library_closure([f["flanneld"]])}),
                "iptables": _iptables_inputs()}

    return _Spec("flannel", FLANNEL_IMAGE, content, note, inputs, build_, version=version)


def _flannel_cni_spec(binaries: Callable[[str], Path]) -> _Spec:
    version = build.VERSIONS["flannel-cni"]
    tag = FLANNEL_CNI_IMAGE.rsplit(":", 1)[1]
    content = (f"the flannel CNI plugin of containernetworking/plugins {version} (mlplat.lab.build) at /flannel; "
               f"busybox {_busybox_version(_busybox())} for cp")
    note = (f"the tag {tag} is the name the bundle's manifest uses (flannel-io/cni-plugin, not served here); "
            f"the plugin is its predecessor from containernetworking/plugins {version}, same contract "
            "(/run/flannel/subnet.env, delegates to bridge and host-local)")

    def build_():
        b = binaries("flannel")
        return ([_base_layer(), _busybox_layer(), _static_binary_layer("flannel", b)],
                oci.ImageConfig(cmd=["/bin/sh"], labels=_labels(content, version, note)))

    return _Spec(
        "flannel-cni", FLANNEL_CNI_IMAGE, content, note,
        inputs=lambda: {"version": version, "busybox-static": _dpkg_version("busybox-static"),
                        "files": _files_inputs({"flannel": binaries("flannel"), "busybox": _busybox()})},
        build=build_, version=version,
    )


# ---- trainer ---------------------------------------------------------------------------------


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def torch_distributions(skip: set[str] = TRAINER_SKIP_DISTS,
                        extra: tuple[str, ...] = TRAINER_EXTRA_DISTS) -> list[md.Distribution]:
    """torch and everything it requires on this platform (extras of requirements followed), minus
    ``skip``, plus those of ``extra`` that are installed; sorted by name. Raises
    :class:`MissingInput` when torch is not installed."""
    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    try:
        md.distribution("torch")
    except md.PackageNotFoundError:
        raise MissingInput("lab images | torch is not installed in this Python environment "
                           "(pip install -e '.[train]')") from None
    found: dict[str, tuple[md.Distribution, set[str]]] = {}
    todo: list[tuple[str, frozenset[str]]] = [("torch", frozenset())]
    for name in extra:
        with contextlib.suppress(md.PackageNotFoundError):
            md.distribution(name)
            todo.append((name, frozenset()))
    env = default_environment()
    while todo:
        name, extras = todo.pop()
        key = _canon(name)
        if key in {_canon(s) for s in skip}:
            continue
        if key in found and extras <= found[key][1]:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            raise MissingInput(f"lab images | {name} (required by torch) is not installed") from None
        have = found.setdefault(key, (dist, set()))[1]
        have |= extras
        for r in dist.requires or []:
            req = Requirement(r)
            if req.marker is None or any(req.marker.evaluate({**env, "extra": e}) for e in ("", *have)):
                todo.append((req.name, frozenset(req.extras)))
    return [found[k][0] for k in sorted(found)]


@dataclass
class _TrainerPlan:
    """Everything the trainer image holds, worked out once."""

    python: Path
    pyver: str  # 3.11
    stdlib: Path
    site: Path
    torch_version: str
    dists: list[md.Distribution]
    dist_files: dict[str, list[Path]]  # canonical dist name -> its files under site-packages
    closure: dict[str, Path]
    unresolved: list[tuple[str, str]] = field(default_factory=list)

    @property
    def image_lib(self) -> str:
        return f"usr/local/lib/python{self.pyver}"


def _stdlib_exclude(rel: str) -> bool:
    top = rel.split("/", 1)[0]
    base = rel.rsplit("/", 1)[-1]
    return top in _STDLIB_SKIP or base.startswith("_tkinter") or base.endswith(".a")


def _trainer_plan() -> _TrainerPlan:
    python = Path(sys.executable).resolve()
    pyver = f"{sys.version_info.major}.{sys.version_info.minor}"
    stdlib = Path(sysconfig.get_paths(vars={"base": sys.base_prefix, "installed_base": sys.base_prefix})["stdlib"])
    site = Path(sysconfig.get_paths()["purelib"])
    if not (stdlib / "os.py").is_file():
        raise MissingInput(f"lab images | the stdlib of {sys.base_prefix} is not at {stdlib}")
    dists = torch_distributions()
    torch_version = md.version("torch")
    site_abs = os.path.abspath(site)
    dist_files: dict[str, list[Path]] = {}
    for d in dists:
        files = []
        for f in d.files or []:
            absp = os.path.abspath(d.locate_file(f))
            # Only what lives in site-packages: scripts in bin/ are not copied (torchrun is written
            # by the recipe for the image's python).
            if absp.startswith(site_abs + os.sep) and (os.path.isfile(absp) or os.path.islink(absp)):
                files.append(Path(absp))
        if not files:
            raise MissingInput(f"lab images | {d.metadata['Name']} has no RECORD of its files")
        dist_files[_canon(d.metadata["Name"])] = sorted(files)
    provided = [stdlib] + [p for fs in dist_files.values() for p in fs]
    elves = [python]
    elves += [p for p in oci.iter_elf_files(stdlib / "lib-dynload") if not _stdlib_exclude("lib-dynload/" + p.name)]
    for fs in dist_files.values():
        for p in fs:
            if p.suffix == ".so" or ".so." in p.name:
                elves.append(p)
    unresolved: list[tuple[str, str]] = []
    closure = oci.library_closure(elves, provided=provided, extra=["libgcc_s.so.1"], optional=HOST_DRIVER_LIBS,
                                  missing=unresolved)
    return _TrainerPlan(python, pyver, stdlib, Path(site_abs), torch_version, dists, dist_files, closure, unresolved)


def _torchrun_script(pyver: str) -> str:
    return (f"#!/usr/local/bin/python{pyver}\n"
            "# torchrun, as pip writes the console script of torch's entry point torch.distributed.run:main\n"
            "import re\nimport sys\nfrom torch.distributed.run import main\n"
            "if __name__ == '__main__':\n"
            "    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n"
            "    sys.exit(main())\n")


def _trainer_spec() -> _Spec:
    torch_version = md.version("torch") if _has_torch() else "missing"
    name = f"{TRAINER_REPOSITORY}:torch-{torch_version.split('+')[0]}"
    plan_cache: list[_TrainerPlan] = []

    def plan() -> _TrainerPlan:
        if not plan_cache:
            plan_cache.append(_trainer_plan())
        return plan_cache[0]

    def content_of(p: _TrainerPlan) -> str:
        return (f"python {sys.version.split()[0]} and torch {_torch_full_version(p.site)} from {sys.prefix} "
                f"({len(p.dists)} distributions: torch's requirements without triton"
                + "".join(f", {n}" for n in TRAINER_EXTRA_DISTS if _canon(n) in p.dist_files) + "), busybox sh")

    def inputs() -> dict:
        p = plan()
        dists = {}
        for d in p.dists:
            record = d.read_text("RECORD") or ""  # RECORD holds the sha256 of every installed file
            dists[_canon(d.metadata["Name"])] = [d.version, hashlib.sha256(record.encode()).hexdigest(),
                                                 len(p.dist_files[_canon(d.metadata["Name"])])]
        stdlib = []
        for e in oci.tree(p.image_lib, p.stdlib, exclude=_stdlib_exclude, keep_mtime=True):
            if e.kind == "file":
                st = e.source.stat()
                stdlib.append((e.path, st.st_size, e.mtime))
            elif e.kind == "symlink":
                stdlib.append((e.path, e.target))
        return {
            "python": sys.version,
            "python_binary": file_sha256(p.python),
            "stdlib": hashlib.sha256(json.dumps(stdlib).encode()).hexdigest(),
            "dists": dists,
            "closure": _files_inputs(p.closure),
            "busybox": _files_inputs({"busybox": _busybox()}),
        }

    def build_() -> tuple[list[oci.Layer], oci.ImageConfig]:
        p = plan()
        pv = p.pyver
        py_entries = [
            oci.file(f"usr/local/bin/python{pv}", p.python, 0o755),
            oci.symlink("usr/local/bin/python3", f"python{pv}"),
            oci.symlink("usr/local/bin/python", f"python{pv}"),
            oci.content("usr/local/bin/torchrun", _torchrun_script(pv), 0o755),
            *oci.tree(p.image_lib, p.stdlib, exclude=_stdlib_exclude, keep_mtime=True),
            oci.directory(f"{p.image_lib}/site-packages"),
            *oci.closure_entries(p.closure),
        ]
        cuda, rest = [], []
        for d in p.dists:
            key = _canon(d.metadata["Name"])
            target = cuda if key.startswith(("nvidia-", "cuda-")) else rest
            for f in p.dist_files[key]:
                rel = f.relative_to(p.site)
                dst = f"{p.image_lib}/site-packages/{rel.as_posix()}"
                if f.is_symlink():
                    target.append(oci.symlink(dst, os.readlink(f)))
                else:
                    target.append(oci.file(dst, f, keep_mtime=True))
        content = content_of(p)
        unresolved = sorted({n for _f, n in p.unresolved})
        note = ("CUDA libraries from the torch wheels are included; the NVIDIA driver (libcuda.so.1) is not "
                "(the node's NVIDIA runtime brings it)")
        if unresolved:
            note += ("; left out because this machine cannot load them either (optional RDMA/MPI transports): "
                     + ", ".join(unresolved))
        layers = [
            _base_layer(),
            _busybox_layer(),
            oci.Layer(py_entries, comment=f"python {sys.version.split()[0]} stdlib, torchrun, shared libraries"),
            oci.Layer(cuda, comment="CUDA libraries of the torch wheels (nvidia-*, cuda-*)"),
            oci.Layer(rest, comment=f"torch {p.torch_version} and its Python dependencies (no triton), "
                      + ", ".join(n for n in TRAINER_EXTRA_DISTS if _canon(n) in p.dist_files)),
        ]
        cfg = oci.ImageConfig(
            cmd=["python3"],
            env=[PATH_ENV, "LANG=C.UTF-8", "HOME=/root"],
            working_dir="/",
            labels=_labels(content, p.torch_version, note),
        )
        return layers, cfg

    return _Spec("trainer", name, f"python {sys.version.split()[0]} + torch {torch_version} (this environment)",
                 "", inputs, build_, version=torch_version)


def _torch_full_version(site: Path) -> str:
    """torch's version with its local part (``2.15.0+cu132``), read from torch/version.py without
    importing torch."""
    try:
        m = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)", (site / "torch" / "version.py").read_text(), re.MULTILINE)
    except OSError:
        m = None
    return m.group(1) if m else md.version("torch")


def _has_torch() -> bool:
    try:
        md.distribution("torch")
        return True
    except md.PackageNotFoundError:
        return False


# ----------------------------------------------------------------------------------------------
# Entry points


class _Binaries:
    """Lab binaries, asked from :func:`mlplat.lab.build.ensure_binaries` only when an image needs
    one, and then only for the component that builds it."""

    def __init__(self, given: dict[str, Path] | None, progress: Progress):
        self._given = {k: Path(v) for k, v in given.items()} if given is not None else None
        self._built: dict[str, Path] = {}
        self._progress = progress

    def __call__(self, name: str) -> Path:
        if self._given is not None:
            path = self._given.get(name)
        else:
            if name not in self._built:
                component = next((c.name for c in build.COMPONENTS if name in c.binaries), None)
                if component is None:
                    raise MissingInput(f"lab images | no component of mlplat.lab.build produces {name} "
                                       f"(components: {', '.join(c.name for c in build.COMPONENTS)})")
                self._built.update(build.ensure_binaries(progress=self._progress, components=[component]))
            path = self._built.get(name)
        if path is None or not Path(path).is_file():
            raise MissingInput(f"lab images | the lab binary {name} is not there ({path or 'not built'})")
        return Path(path)


def _specs(names: list[str] | None, binaries: _Binaries, kubeadm_list: list[str] | None) -> list[_Spec]:
    want = None if names is None else list(dict.fromkeys(names))
    others = {"busybox": BUSYBOX_IMAGE, "alpine": PYTORCH_INIT_IMAGE, "training-operator": TRAINING_OPERATOR_IMAGE,
              "flannel": FLANNEL_IMAGE, "flannel-cni": FLANNEL_CNI_IMAGE}
    need_kubeadm = want is None or any(n in _KUBEADM_BINARY or n.startswith("registry.k8s.io/") for n in want)
    kubeadm_names: list[str] = []
    if need_kubeadm:
        kubeadm_names = list(kubeadm_list) if kubeadm_list is not None else kubeadm_images(binaries("kubeadm"))
    specs: dict[str, _Spec] = {}

    def make(key: str, name: str | None = None) -> _Spec:
        if key in _KUBEADM_BINARY:
            return _kubeadm_spec(name, binaries)
        if key in ("busybox", "alpine"):
            return _busybox_spec(key, others[key])
        if key == "training-operator":
            return _training_operator_spec(binaries)
        if key == "flannel":
            return _flannel_spec(binaries)
        if key == "flannel-cni":
            return _flannel_cni_spec(binaries)
        return _trainer_spec()

    by_name = {n: _kubeadm_key(n) for n in kubeadm_names}
    by_name.update({v: k for k, v in others.items()})
    key_to_name = {k: n for n, k in by_name.items()}
    requested = want if want is not None else [*kubeadm_names, *others.values(), "trainer"]
    for n in requested:
        if n in by_name:
            key, full = by_name[n], n
        elif n in key_to_name:
            key, full = n, key_to_name[n]
        elif n == "trainer" or n.startswith(TRAINER_REPOSITORY + ":"):
            key, full = "trainer", None
        else:
            raise ImagesError(f"lab images | unknown image {n!r}; known: {', '.join([*KEYS, *by_name])}")
        if key not in specs:
            spec = make(key, full)
            if key == "trainer" and n != "trainer" and n != spec.name:
                raise ImagesError(f"lab images | {n} is not this environment's trainer image ({spec.name})")
            specs[key] = spec
    # small images first, the trainer (GBs) last
    return sorted(specs.values(), key=lambda s: s.key == "trainer")


def ensure_images(names: list[str] | None = None, force: bool = False, progress: Progress = print, *,
                  binaries: dict[str, Path] | None = None, kubeadm_list: list[str] | None = None) -> list[BuiltImage]:
    """Build (or reuse from the cache) the lab's images; return one :class:`BuiltImage` each.

    ``names``: full references or keys (:data:`KEYS`: ``kube-apiserver``, ``pause``, ``etcd``,
    ``busybox``, ``alpine``, ``training-operator``, ``trainer``, ...); None means all of them.
    The lab binaries come from :func:`mlplat.lab.build.ensure_binaries` (only when a selected image
    needs one) unless ``binaries`` (name -> path) is given; kubeadm's list comes from the built
    kubeadm unless ``kubeadm_list`` is given. Raises :class:`MissingInput` when a binary or package
    an image needs is not there, :class:`ImagesError` for other failures."""
    t0 = time.monotonic()
    bins = _Binaries(binaries, progress)
    out: list[BuiltImage] = []
    with _lock(progress):
        for spec in _specs(names, bins, kubeadm_list):
            key = _key(spec)
            valid, why = (False, "forced") if force else _valid(spec.name, key)
            path = archive_path(spec.name)
            if valid:
                stamp = _read_stamp(spec.name)
                progress(f"lab images | {spec.name} | cached ({stamp['size'] / 1e6:.1f} MB) in {path}")
                out.append(_from_stamp(stamp, path, cached=True))
                continue
            progress(f"lab images | {spec.name} | building ({why})")
            layers, cfg = spec.build()
            annotations = {k: v for k, v in cfg.labels.items() if k in (LABEL_CONTENT, LABEL_NOTE, LABEL_VERSION)}
            written = oci.write_image(path, spec.name, layers, cfg, annotations=annotations, progress=progress)
            stamp = {
                "key": spec.key,
                "name": spec.name,
                "cache_key": key,
                "size": written.size,
                "digest": written.manifest_digest,
                "layers": [asdict(la) for la in written.layers],
                "content": cfg.labels.get(LABEL_CONTENT, spec.content),
                "note": cfg.labels.get(LABEL_NOTE, ""),
                "seconds": written.seconds,
                "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "recipe": RECIPE_VERSION,
            }
            stamp_path = path.with_suffix(".json")
            tmp = stamp_path.with_name(stamp_path.name + f".tmp-{os.getpid()}")
            tmp.write_text(json.dumps(stamp, indent=2) + "\n")
            os.replace(tmp, stamp_path)
            progress(f"lab images | {spec.name} | built in {written.seconds:.1f}s, {written.size / 1e6:.1f} MB, "
                     f"{len(written.layers)} layers (total {time.monotonic() - t0:.0f}s)")
            out.append(_from_stamp(stamp, path, cached=False))
    return out


def _from_stamp(stamp: dict, path: Path, cached: bool) -> BuiltImage:
    return BuiltImage(key=stamp["key"], name=stamp["name"], path=path, size=stamp["size"], content=stamp["content"],
                      digest=stamp["digest"], cache_key=stamp["cache_key"], seconds=stamp["seconds"], cached=cached,
                      note=stamp.get("note", ""), layers=len(stamp.get("layers", [])))


def images_table(images: list[BuiltImage]):
    """The images as a pandas DataFrame: name, what is inside, size (MB), build seconds, cached."""
    import pandas as pd

    rows = [{
        "image": im.name,
        "key": im.key,
        "content": im.content,
        "size_mb": round(im.size / 1e6, 1),
        "layers": im.layers,
        "build_s": im.seconds,
        "cached": im.cached,
        "digest": im.digest,
        "note": im.note,
        "path": str(im.path),
    } for im in images]
    return pd.DataFrame(rows, columns=["image", "key", "content", "size_mb", "layers", "build_s", "cached", "digest",
                                       "note", "path"])


def main(argv: list[str] | None = None) -> int:
    """``python -m mlplat.lab.images``: build or verify the lab's images; prints the table."""
    parser = argparse.ArgumentParser(prog="python -m mlplat.lab.images", description=ensure_images.__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"images (full names or keys: {', '.join(KEYS)}); default all")
    parser.add_argument("--force", action="store_true", help="rebuild even when the cache is valid")
    args = parser.parse_args(argv)
    try:
        built = ensure_images(args.names or None, force=args.force, progress=lambda s: print(s, flush=True))
    except (ImagesError, build.LabBuildError, oci.OciError) as e:
        print(e, file=sys.stderr)
        return 2 if isinstance(e, MissingInput) else 1
    table = images_table(built)
    with contextlib.suppress(ImportError):
        import pandas as pd

        with pd.option_context("display.max_colwidth", 60, "display.width", 200):
            print(table[["image", "size_mb", "layers", "build_s", "cached"]].to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
