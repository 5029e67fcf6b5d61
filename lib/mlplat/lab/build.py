"""Build the local lab's binaries from the Go module proxy and cache them outside the repository.

The build manifests are the wrapper modules under ``lab/go/<component>/`` (go.mod + go.sum with
``tool`` directives; no vendored upstream code). :data:`VERSIONS` is the one list of versions;
each wrapper's go.mod must agree with it (checked before building). Binaries land in
``${MLPLAT_CACHE:-~/.cache/mlplat}/bin/<component>-<version>/`` with a ``stamp.json`` and a
``build.log``; a valid cache (stamp matches the manifest, binaries present, version output right)
skips the build. Recipe and pitfalls: ``shared/reference/lab-control-plane.md``.

Two sets of components: :data:`KWOK_COMPONENTS` (the default lab: control plane, etcd, KWOK, the
training operator) and :data:`REAL_NODE_COMPONENTS` (kubeadm-built nodes: adds kubelet,
kube-proxy, CoreDNS and flannel with its CNI plugin, drops KWOK); :data:`NODE_SETS` names them for the command line.

Command line: ``python -m mlplat.lab.build [--nodes kwok|real|all] [--force] [--json]``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import mmap
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
GO_DIR = REPO_ROOT / "lab" / "go"

# Component -> version, the single manifest of the lab's binaries. Checked against the proxy on
# 2026-11-28 with `go list -m -versions` / `go list -m <mod>@<ver>`:
# - k8s.io/kubernetes v1.34.4 (served: 1.34.0/2/3/4, 1.35.4, 1.36.1/3, 1.37.2, ...)
# - go.etcd.io/etcd/server/v3 v3.6.16, the newest 3.6 served (3.6.0 ... 3.6.16, 3.7.0-3)
# - sigs.k8s.io/kwok v0.8.0 (served: v0.6.1, v0.7.0, v0.8.0)
# - github.com/kubeflow/training-operator v1.9.4: `-versions` lists only v1.8.1, but v1.9.0-v1.9.4
#   resolve when asked for by name; v1.9.5 is "not available".
# - github.com/coredns/coredns v1.12.1, the CoreDNS kubeadm v1.34.4 deploys (`kubeadm config
#   images list`): `-versions` lists only v1.14.3 ... v1.15.0, but v1.12.1 resolves by name.
# - github.com/flannel-io/flannel v0.28.9, the flannel of the offline bundle's kube-flannel-v0.28.9.yml
#   (its Tencent VPC SDK pinned to a served version: lab/go/flannel/go.mod says why).
# - github.com/containernetworking/plugins v0.9.1, the last release holding the flannel CNI plugin
#   (github.com/flannel-io/cni-plugin, its successor, is not served: lab/go/flannel-cni/go.mod).
# Keys are the wrapper modules under lab/go/ (one component may share another's wrapper).
VERSIONS: dict[str, str] = {
    "kubernetes": "v1.34.4",
    "etcd": "v3.6.16",
    "kwok": "v0.8.0",
    "training-operator": "v1.9.4",
    "coredns": "v1.12.1",
    "flannel": "v0.28.9",
    "flannel-cni": "v0.9.1",
}

# Upstream tag time of k8s.io/kubernetes v1.34.4 (`go list -m -json`), stamped as buildDate so
# that builds are reproducible. The module zip carries no commit, so gitCommit stays unset.
KUBERNETES_BUILD_DATE = "2026-02-10T12:53:36Z"

# Commit of the coredns v1.12.1 tag (`go list -m -json`, Origin.Hash), abbreviated as upstream's
# Makefile stamps it (GITCOMMIT); `coredns -version` prints it on its second line.
COREDNS_GIT_COMMIT = "707c7c1"

Progress = Callable[[str], None]


class LabBuildError(RuntimeError):
    """A lab build failed. ``permanent`` is True when retrying cannot help (e.g. no Go)."""

    def __init__(self, message: str, *, permanent: bool = True):
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class Component:
    """A set of binaries built from one wrapper module under lab/go/, cached together."""

    name: str
    module: str
    binaries: dict[str, str]  # output file name -> Go main package
    ldflags: str = "-s -w"
    tags: str = ""
    # How to ask each binary its version; None means "read the Go build info" (no version flag).
    version_args: dict[str, tuple[str, ...] | None] = field(default_factory=dict)
    go_dir: str = ""  # the wrapper module lab/go/<go_dir> (and key of VERSIONS); default: name
    cgo: bool = False  # CGO_ENABLED=1 (linked against this machine's libc) where upstream builds so

    @property
    def version(self) -> str:
        return VERSIONS[self.go_dir or self.name]

    @property
    def wrapper(self) -> Path:
        return GO_DIR / (self.go_dir or self.name)


def _kubernetes_ldflags(version: str) -> str:
    # hack/lib/version.sh stamps both packages; kubeadm (image tags, skew checks) and kwokctl (flag
    # sets per version: an unstamped v0.0.0 counts as "newest") both read these.
    major, minor_, _ = version.lstrip("v").split(".")
    keys = {
        "gitVersion": version,
        "gitMajor": major,
        "gitMinor": minor_,
        "gitTreeState": "clean",
        "buildDate": KUBERNETES_BUILD_DATE,
    }
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/client-go/pkg/version", "k8s.io/component-base/version"):
        flags += [f"-X '{pkg}.{k}={v}'" for k, v in keys.items()]
    return " ".join(flags)


_KUBERNETES_LDFLAGS = _kubernetes_ldflags(VERSIONS["kubernetes"])
_KUBERNETES_TAGS = "selinux,notest,grpcnotrace"  # as upstream hack/lib/golang.sh

COMPONENTS: tuple[Component, ...] = (
    Component(
        name="kubernetes",
        module="k8s.io/kubernetes",
        binaries={
            b: f"k8s.io/kubernetes/cmd/{b}"
            for b in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubeadm", "kubectl")
        },
        ldflags=_KUBERNETES_LDFLAGS,
        tags=_KUBERNETES_TAGS,
        version_args={
            "kube-apiserver": ("--version",),
            "kube-controller-manager": ("--version",),
            "kube-scheduler": ("--version",),
            "kubeadm": ("version", "-o", "short"),
            "kubectl": ("version", "--client"),
        },
    ),
    # The node binaries of real (kubeadm) nodes: same wrapper, replaces, tags and version stamp as
    # the control plane (kubeadm's preflight parses `kubelet --version`), cached on their own so
    # the KWOK lab neither builds nor checks them.
    Component(
        name="kubernetes-node",
        go_dir="kubernetes",
        module="k8s.io/kubernetes",
        binaries={b: f"k8s.io/kubernetes/cmd/{b}" for b in ("kubelet", "kube-proxy")},
        ldflags=_KUBERNETES_LDFLAGS,
        tags=_KUBERNETES_TAGS,
        version_args={"kubelet": ("--version",), "kube-proxy": ("--version",)},
    ),
    Component(
        name="etcd",
        module="go.etcd.io/etcd/server/v3",
        binaries={"etcd": "go.etcd.io/etcd/server/v3"},
        version_args={"etcd": ("--version",)},
    ),
    Component(
        name="kwok",
        module="sigs.k8s.io/kwok",
        binaries={"kwok": "sigs.k8s.io/kwok/cmd/kwok", "kwokctl": "sigs.k8s.io/kwok/cmd/kwokctl"},
        version_args={"kwok": ("--version",), "kwokctl": ("--version",)},
    ),
    Component(
        name="training-operator",
        module="github.com/kubeflow/training-operator",
        binaries={"training-operator.v1": "github.com/kubeflow/training-operator/cmd/training-operator.v1"},
        version_args={"training-operator.v1": None},
    ),
    Component(
        name="coredns",
        module="github.com/coredns/coredns",
        binaries={"coredns": "github.com/coredns/coredns"},
        ldflags=f"-s -w -X github.com/coredns/coredns/coremain.GitCommit={COREDNS_GIT_COMMIT}",
        version_args={"coredns": ("-version",)},
    ),
    # As upstream's Makefile builds flanneld: with cgo (its UDP backend is C on amd64) and the
    # version stamped; install-conf (`cp` done atomically, the manifest's install-cni init
    # container) has no version flag.
    Component(
        name="flannel",
        module="github.com/flannel-io/flannel",
        binaries={"flanneld": "github.com/flannel-io/flannel",
                  "install-conf": "github.com/flannel-io/flannel/cmd/install_conf"},
        ldflags="-s -w -X github.com/flannel-io/flannel/pkg/version.Version=" + VERSIONS["flannel"],
        version_args={"flanneld": ("--version",), "install-conf": None},
        cgo=True,
    ),
    # The flannel CNI plugin answers its version only on CNI_COMMAND=VERSION: read the build info.
    Component(
        name="flannel-cni",
        module="github.com/containernetworking/plugins",
        binaries={"flannel": "github.com/containernetworking/plugins/plugins/meta/flannel"},
        version_args={"flannel": None},
    ),
)

# Which components each kind of lab needs (names of COMPONENTS, built in COMPONENTS order).
KWOK_COMPONENTS: tuple[str, ...] = ("kubernetes", "etcd", "kwok", "training-operator")
REAL_NODE_COMPONENTS: tuple[str, ...] = ("kubernetes", "kubernetes-node", "etcd", "coredns", "training-operator",
                                          "flannel", "flannel-cni")
NODE_SETS: dict[str, tuple[str, ...]] = {
    "kwok": KWOK_COMPONENTS,
    "real": REAL_NODE_COMPONENTS,
    "all": tuple(c.name for c in COMPONENTS),
}


def select_components(names=None) -> tuple[Component, ...]:
    """The components named (any iterable of COMPONENTS names; None: :data:`KWOK_COMPONENTS`), in
    COMPONENTS order. Raises a permanent :class:`LabBuildError` naming any unknown name."""
    wanted = set(KWOK_COMPONENTS if names is None else ([names] if isinstance(names, str) else names))
    unknown = sorted(wanted - {c.name for c in COMPONENTS})
    if unknown:
        raise LabBuildError(
            f"lab build | unknown component(s) {', '.join(unknown)}: choose from "
            f"{', '.join(c.name for c in COMPONENTS)}"
        )
    return tuple(c for c in COMPONENTS if c.name in wanted)


def cache_root() -> Path:
    """The cache directory: ``$MLPLAT_CACHE`` or ``~/.cache/mlplat``."""
    return Path(os.environ.get("MLPLAT_CACHE") or Path.home() / ".cache" / "mlplat")


def component_dir(component: Component) -> Path:
    """Where one component's binaries live: ``<cache>/bin/<component>-<version>/``."""
    return cache_root() / "bin" / f"{component.name}-{component.version}"


def training_operator_crds(binaries: dict[str, Path]) -> Path:
    """The directory of the training operator's CRDs copied next to its binary at build time."""
    return binaries["training-operator.v1"].parent / "crds"


def _manifest_hash(component: Component) -> str:
    h = hashlib.sha256()
    for name in ("go.mod", "go.sum"):
        h.update((component.wrapper / name).read_bytes())
    recipe = {"binaries": component.binaries, "ldflags": component.ldflags, "tags": component.tags}
    if component.cgo:
        recipe["cgo"] = True
    h.update(json.dumps(recipe, sort_keys=True).encode())
    return h.hexdigest()


def _version_ok(component: Component, name: str, path: Path) -> tuple[bool, str]:
    """Whether a built binary reports the pinned version; returns (ok, what it said)."""
    want = component.version.lstrip("v")
    args = component.version_args.get(name, ("--version",))
    if args is None:
        # No version flag (training-operator.v1 only parses flags and starts): the Go build info
        # embedded in every module-mode binary lists the dependency and its version as text.
        needle = f"\t{component.module}\t{component.version}\t".encode()
        with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            found = m.find(needle) >= 0
        return found, f"build info {'lists' if found else 'lacks'} {component.module} {component.version}"
    try:
        out = subprocess.run([str(path), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, str(e)
    text = (out.stdout + out.stderr).strip()
    return (out.returncode == 0 and want in text), text.splitlines()[0] if text else ""


def _cache_valid(component: Component, manifest_hash: str) -> tuple[bool, str]:
    d = component_dir(component)
    try:
        stamp = json.loads((d / "stamp.json").read_text())
    except (OSError, ValueError):
        return False, "no stamp"
    if stamp.get("version") != component.version or stamp.get("manifest") != manifest_hash:
        return False, "stamp does not match lab/go manifest"
    for name in component.binaries:
        path = d / name
        if not (path.is_file() and os.access(path, os.X_OK)):
            return False, f"{name} missing"
        ok, said = _version_ok(component, name, path)
        if not ok:
            return False, f"{name} reports {said!r}, want {component.version}"
    if component.name == "training-operator" and not any((d / "crds").glob("*.yaml")):
        return False, "CRDs missing"
    return True, "ok"


def _go() -> str:
    go = shutil.which("go")
    if not go:
        raise LabBuildError(
            "lab build | the Go toolchain is not on PATH: install Go >= 1.26 (the kwok, etcd and "
            "training-operator modules say `go 1.26.0`) and make the Go module proxy reachable",
            permanent=True,
        )
    return go


def _check_wrapper(component: Component) -> None:
    gomod = component.wrapper / "go.mod"
    if not gomod.is_file():
        raise LabBuildError(f"lab build | {gomod} is missing: the lab builds from a source checkout")
    want = f"{component.module} {component.version}"
    if not any(line.split("//")[0].strip().endswith(want) for line in gomod.read_text().splitlines()):
        raise LabBuildError(
            f"lab build | {gomod} does not require {want}: keep VERSIONS in "
            f"lib/mlplat/lab/build.py and the wrapper module in step (`go get {component.module}@"
            f"{component.version}` there, then `go mod tidy`)"
        )


def _run_measured(cmd: list[str], **kwargs) -> tuple[int, float]:
    """Run ``cmd``; return its exit code and the peak RSS (MB) of its process tree: wait4's
    ru_maxrss covers the Go compile/link processes that ``go build`` waited for."""
    proc = subprocess.Popen(cmd, **kwargs)
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here; Popen must not wait again
    return proc.returncode, usage.ru_maxrss / 1024


def _build_component(component: Component, manifest_hash: str, progress: Progress, t0: float) -> dict:
    go = _go()
    final = component_dir(component)
    work = final.with_name(final.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log_path = work / "build.log"
    env = dict(os.environ, CGO_ENABLED="1" if component.cgo else "0")
    env["GOFLAGS"] = " ".join(filter(None, [os.environ.get("GOFLAGS", ""), "-mod=readonly"]))
    seconds: dict[str, float] = {}
    peak_rss_mb: dict[str, int] = {}
    with log_path.open("w") as log:
        goversion = subprocess.run([go, "version"], capture_output=True, text=True).stdout.strip()
        log.write(f"# {component.name} {component.version}  {goversion}\n# wrapper {component.wrapper}\n")
        for name, pkg in component.binaries.items():
            cmd = [go, "build", "-trimpath", "-ldflags", component.ldflags, "-o", str(work / name)]
            if component.tags:
                cmd += ["-tags", component.tags]
            cmd.append(pkg)
            progress(f"lab build | {component.name}: {name} {component.version} | building "
                     f"(total {time.monotonic() - t0:.0f}s)")
            log.write(f"\n$ CGO_ENABLED={env['CGO_ENABLED']} GOFLAGS='{env['GOFLAGS']}' {' '.join(cmd)}\n")
            log.flush()
            start = time.monotonic()
            rc, rss = _run_measured(cmd, cwd=component.wrapper, env=env, stdout=log, stderr=subprocess.STDOUT)
            seconds[name] = round(time.monotonic() - start, 1)
            peak_rss_mb[name] = round(rss)
            log.write(f"# rc={rc} {seconds[name]}s peak-rss={peak_rss_mb[name]}MB\n")
            log.flush()
            if rc != 0:
                tail = "".join(log_path.read_text().splitlines(keepends=True)[-15:])
                raise LabBuildError(
                    f"lab build | {component.name}: {name} {component.version} | go build failed (rc={rc}); "
                    f"log: {log_path}\n{tail}",
                    permanent=False,
                )
            ok, said = _version_ok(component, name, work / name)
            if not ok:
                raise LabBuildError(
                    f"lab build | {component.name}: {name} | built binary reports {said!r}, want {component.version}"
                )
            progress(
                f"lab build | {component.name}: {name} {component.version} | built in {seconds[name]:.0f}s "
                f"(peak RSS {peak_rss_mb[name]} MB, total {time.monotonic() - t0:.0f}s): {said}"
            )
        if component.name == "training-operator":
            _copy_training_operator_crds(component, work, env, log)
    stamp = {
        "component": component.name,
        "version": component.version,
        "manifest": manifest_hash,
        "go": goversion,
        "seconds": seconds,
        "peak_rss_mb": peak_rss_mb,
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (work / "stamp.json").write_text(json.dumps(stamp, indent=2) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    work.rename(final)
    return stamp


def _copy_training_operator_crds(component: Component, work: Path, env: dict, log) -> None:
    # The CRDs ship inside the module zip (manifests/base/crds/); copy them next to the binary so
    # the lab does not depend on the module cache surviving `go clean -modcache`.
    out = subprocess.run(
        [_go(), "list", "-m", "-json", component.module],
        cwd=component.wrapper, env=env, capture_output=True, text=True,
    )
    if out.returncode != 0:
        raise LabBuildError(f"lab build | training-operator CRDs | go list failed: {out.stderr.strip()}")
    src = Path(json.loads(out.stdout)["Dir"]) / "manifests" / "base" / "crds"
    dst = work / "crds"
    dst.mkdir()
    for f in sorted(src.glob("kubeflow.org_*.yaml")):
        shutil.copyfile(f, dst / f.name)
        log.write(f"# copied CRD {f}\n")


def ensure_binaries(
    force: bool = False, progress: Progress = print, components=None
) -> dict[str, Path]:
    """Build (or reuse from the cache) the lab's binaries; return binary name -> absolute path.

    ``components``: names from COMPONENTS (e.g. :data:`REAL_NODE_COMPONENTS`); None builds the
    KWOK lab's set, :data:`KWOK_COMPONENTS`, whose names are kube-apiserver,
    kube-controller-manager, kube-scheduler, kubeadm, kubectl, etcd, kwok, kwokctl and
    training-operator.v1 (its CRDs: :func:`training_operator_crds`); kubernetes-node adds kubelet
    and kube-proxy, coredns adds coredns, flannel adds flanneld and install-conf, flannel-cni adds
    flannel (the CNI plugin). Components build one after the other (the machine has 2
    cores); each cached component is checked (stamp matches the lab/go manifest, binaries present,
    version output right) and skipped when valid, unless ``force``. Raises
    :class:`LabBuildError` (permanent when Go is missing, a component is unknown or a manifest is
    inconsistent; temporary when ``go build`` fails, e.g. the proxy was unreachable).
    """
    t0 = time.monotonic()
    paths: dict[str, Path] = {}
    selected = select_components(components)
    for component in selected:
        _check_wrapper(component)
    with _cache_lock(progress):
        for component in selected:
            manifest_hash = _manifest_hash(component)
            valid, why = (False, "forced") if force else _cache_valid(component, manifest_hash)
            if valid:
                progress(f"lab build | {component.name} {component.version} | cached in {component_dir(component)}")
            else:
                progress(f"lab build | {component.name} {component.version} | building ({why})")
                _build_component(component, manifest_hash, progress, t0)
            for name in component.binaries:
                paths[name] = component_dir(component) / name
    progress(f"lab build | done in {time.monotonic() - t0:.1f}s")
    return paths


@contextlib.contextmanager
def file_lock(lock_path: Path, progress: Progress, what: str):
    """An exclusive lock on ``lock_path``, saying so when another process holds it."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"{what} | waiting for another build holding {lock_path}")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _cache_lock(progress: Progress):
    # Two callers at once (the CLI and a test session) would build into the same .partial dirs.
    return file_lock(cache_root() / "bin" / ".lock", progress, "lab build")


def main(argv: list[str] | None = None) -> int:
    """``mlplat lab build``: build or verify the lab binaries; prints their paths."""
    parser = argparse.ArgumentParser(prog="mlplat lab build", description=ensure_binaries.__doc__.splitlines()[0])
    parser.add_argument("--nodes", choices=sorted(NODE_SETS), default="kwok",
                        help="which lab's binaries: kwok (default), real (kubeadm nodes: kubelet, "
                             "kube-proxy, CoreDNS) or all")
    parser.add_argument("--force", action="store_true", help="rebuild even when the cache is valid")
    parser.add_argument("--json", action="store_true", help="print name -> path as JSON on stdout")
    args = parser.parse_args(argv)
    log = (lambda s: print(s, file=sys.stderr, flush=True)) if args.json else (lambda s: print(s, flush=True))
    try:
        paths = ensure_binaries(force=args.force, progress=log, components=NODE_SETS[args.nodes])
    except LabBuildError as e:
        print(e, file=sys.stderr)
        return 2 if e.permanent else 1
    if args.json:
        print(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))
    else:
        for name, path in paths.items():
            print(f"{name:24} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
