"""Fixtures of the Kubeflow (phase 50) tests.

- ``bundle``: the shared offline bundle (``shared/fixtures/offline-bundle``); tests skip without it.
- ``kf_cache``: a build cache of this session (a tmp folder): every build here starts from nothing.
- ``offline_builds``: the builds the tests read, made once per session **in a network namespace of
  their own** (``unshare --net``: a loopback and nothing else, so no connection can leave the
  machine whatever kustomize or git try); results land in ``kf_cache``, where in-process builds of
  the same inputs find them. Without root or unshare the builds run in-process behind
  :func:`no_network` instead, and the test that needs the namespace says so.
- ``no_network``: ``socket.connect`` raises for anything but loopback and Unix sockets.
- ``kf_lab``: a lab cluster of its own (real etcd, API server, controllers, scheduler; KWOK nodes)
  started with :func:`mlplat.lab.cluster.up` in a tmp folder, and a params file for it; torn down
  at the end.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

SUFFIX = uuid.uuid4().hex[:5]

# name -> build options; the child process below builds them all, without a network
BUILDS = {
    "default": dict(components="default", istio_owner="kubeflow"),
    "default-phase40": dict(components="default", istio_owner="phase40"),
    "default-registry": dict(components="default", istio_owner="kubeflow", mirror_mode="registry",
                             registry="registry.example.internal:5000"),
    "training": dict(components="training-only", istio_owner="kubeflow"),
    "training-registry": dict(components="training-only", istio_owner="kubeflow", mirror_mode="registry",
                              registry="registry.example.internal:5000"),
    # what phase 50 builds on the KWOK lab (the lab tests apply these)
    "training-lab": dict(components="training-only", istio_owner="kubeflow", lab_without_webhooks=True),
    "default-lab": dict(components="default", istio_owner="kubeflow", lab_without_webhooks=True),
}

_CHILD = r"""
import json, socket, sys, time
from pathlib import Path
from mlplat.kubeflow import build, source
cache, bundle, specs = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
s = socket.socket(); s.settimeout(3)
probe = s.connect_ex(("1.1.1.1", 443)); s.close()
src = source.offline(bundle, cache=cache)
out = {"probe_errno": probe, "builds": {}}
for name, opts in specs.items():
    t = time.monotonic()
    r = build.build(src, build.Options(**opts), cache=cache)
    out["builds"][name] = {"seconds": round(time.monotonic() - t, 1), "durations": r.durations,
                           "objects": len(r.objects), "images": len(r.inventory.full), "cached": r.cached,
                           "left_out": r.left_out, "remotes": r.remotes, "patches": r.patches}
print("RESULT " + json.dumps(out))
"""


def _bundle_dir() -> Path | None:
    from mlplat.kubeflow.source import default_bundle

    return default_bundle()


@pytest.fixture(scope="session")
def bundle() -> Path:
    b = _bundle_dir()
    if b is None:
        import shared_kit

        pytest.skip(shared_kit.missing_reason(shared_kit.BUNDLE, "the shared offline bundle"))
    return b


@pytest.fixture(scope="session")
def kf_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("kf-cache")


def _netns_available() -> str | None:
    if os.geteuid() != 0:
        return "needs root for unshare --net"
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    p = subprocess.run(["unshare", "--net", "true"], capture_output=True, text=True)
    if p.returncode != 0:
        return f"unshare --net fails here: {p.stderr.strip()}"
    return None


@dataclass
class OfflineBuilds:
    in_netns: bool
    why_not: str
    summary: dict
    seconds: float


@pytest.fixture(scope="session")
def offline_builds(bundle, kf_cache) -> OfflineBuilds:
    import time

    why = _netns_available()
    t0 = time.monotonic()
    if why is None:
        cmd = ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$0" "$@"', sys.executable, "-c", _CHILD,
               str(kf_cache), str(bundle), json.dumps(BUILDS)]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
        assert p.returncode == 0 and line, f"offline builds failed in the network namespace:\n{p.stderr[-4000:]}"
        return OfflineBuilds(True, "", json.loads(line[len("RESULT "):]), time.monotonic() - t0)
    from mlplat.kubeflow import build as kbuild
    from mlplat.kubeflow import source

    guard = _NetworkGuard()
    with guard:
        src = source.offline(bundle, cache=kf_cache)
        out = {"probe_errno": None, "builds": {}}
        for name, opts in BUILDS.items():
            r = kbuild.build(src, kbuild.Options(**opts), cache=kf_cache)
            out["builds"][name] = {"durations": r.durations, "objects": len(r.objects), "left_out": r.left_out,
                                   "remotes": r.remotes, "patches": r.patches, "cached": r.cached}
    return OfflineBuilds(False, why, out, time.monotonic() - t0)


@pytest.fixture(scope="session")
def kf_source(bundle, kf_cache):
    from mlplat.kubeflow import source

    return source.offline(bundle, cache=kf_cache)


@pytest.fixture(scope="session")
def built(offline_builds, kf_source, kf_cache):
    """name -> build Result (read back from the session cache the offline builds filled)."""
    from mlplat.kubeflow import build as kbuild

    out = {}
    for name, opts in BUILDS.items():
        out[name] = kbuild.build(kf_source, kbuild.Options(**opts), cache=kf_cache)
        assert out[name].cached, f"{name} was not found in the cache the offline builds wrote"
    return out


# -- network guard ------------------------------------------------------------------------------
def _loopback(address) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX
        return True
    host = address[0]
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class NetworkBlocked(OSError):
    pass


class _NetworkGuard:
    """Make every non-loopback connect of this process fail (and count the attempts)."""

    def __init__(self):
        self.attempts: list = []

    def __enter__(self):
        self._orig = (socket.socket.connect, socket.socket.connect_ex)
        guard = self

        def connect(sock, address):
            if not _loopback(address):
                guard.attempts.append(address)
                raise NetworkBlocked(f"test: network access to {address} blocked")
            return guard._orig[0](sock, address)

        def connect_ex(sock, address):
            if not _loopback(address):
                guard.attempts.append(address)
                raise NetworkBlocked(f"test: network access to {address} blocked")
            return guard._orig[1](sock, address)

        socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
        return self

    def __exit__(self, *exc):
        socket.socket.connect, socket.socket.connect_ex = self._orig


@pytest.fixture
def no_network():
    with _NetworkGuard() as g:
        yield g


# -- the lab cluster ----------------------------------------------------------------------------
@dataclass
class KfLab:
    state: Path
    kubeconfig: Path
    hosts: list[dict]

    def params(self, path: Path, **kubeflow) -> Path:
        path.write_text(yaml.safe_dump({
            "site": f"kf-{SUFFIX}",
            "os": {"family": "debian", "distro": "debian", "version": "12"},
            "hosts": self.hosts,
            "kubernetes": {"existing_kubeconfig": str(self.kubeconfig)},
            "lab": {"state_dir": str(self.state), "nodes": "kwok", "simulated_gpus": 4},
            "kubeflow": {"components": "training-only", "istio_owner": "kubeflow", "apply_timeout": 600, **kubeflow},
        }, sort_keys=False))
        return path


@pytest.fixture(scope="session")
def kf_lab(tmp_path_factory) -> KfLab:
    if os.geteuid() != 0:
        pytest.skip("the lab cluster needs root")
    from mlplat.lab import build, cluster

    try:
        binaries = build.ensure_binaries(progress=lambda s: None)
    except build.LabBuildError as e:
        pytest.skip(f"lab binaries are not built and cannot be built here: {e}")
    state = tmp_path_factory.mktemp("kf-lab")
    hosts = [{"name": f"kf-{SUFFIX}-1", "address": "127.0.12.1", "roles": ["control-plane", "worker"], "gpus": 0},
             {"name": f"kf-{SUFFIX}-2", "address": "127.0.12.2", "roles": ["worker"], "gpus": 0}]
    kubeconfig = state / "kubeconfig"
    cluster.up(state / "cluster", kubeconfig, [{"name": h["name"], "gpus": 4, "roles": h["roles"]} for h in hosts],
               binaries=binaries, progress=lambda s: None)
    try:
        yield KfLab(state, kubeconfig, hosts)
    finally:
        cluster.down(state / "cluster", progress=lambda s: None)


@pytest.fixture
def kube(kf_lab):
    from mlplat.kube import client_from

    k = client_from(str(kf_lab.kubeconfig))
    yield k
    k.close()
