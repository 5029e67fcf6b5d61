"""The lab cluster: a real Kubernetes control plane with KWOK simulating the GPU nodes.

``kwokctl`` (binary runtime) starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler
and kwok-controller from the binaries :func:`mlplat.lab.build.ensure_binaries` built; nothing is
downloaded (every binary is a local path, and kwokctl's own kubectl lookup is pointed at ours).
Fake Nodes carry the lab hosts' names, ``nvidia.com/gpu`` capacity and role labels; the Stages in
``kwok_stages.yaml`` run pods of Jobs, PyTorchJobs, TFJobs and JobSets to completion; a ClusterLogs
rule makes ``kubectl logs`` of any pod return one file.

Network isolation
-----------------
The whole control plane (kwokctl and everything it starts, and the out-of-cluster Kubeflow
training operator) runs in ONE network namespace per lab cluster, with nothing in it but a
loopback interface: ``<state>/netns``, a file on which the namespace is bind-mounted (no name
under /run/netns; nothing outside the state dir). There is no route at all in it, so whatever the
API server dials beyond 127.0.0.0/8 (a webhook's Service ClusterIP in 10.0.0.0/24, an aggregated
API, a DNS server) fails at once, locally, with "connect: network is unreachable"; no packet can
leave the machine, whatever its routing table says. Everything binds 127.0.0.1 in that namespace,
so parallel clusters never collide there.

The machine (root network namespace) sees one thing of the lab: the API server, on
``127.0.0.1:<port>`` (same port inside and out, so one kubeconfig works on both sides), through a
forwarder. ``up`` creates the forwarder's listening socket itself, in the root namespace, and hands
it to ``python -m mlplat.lab.cluster forward-apiserver``, started inside the lab namespace: sockets
keep the namespace they were created in, so it accepts on the machine's loopback and every
upstream connection it opens lands on the lab's loopback. It is a supervised child like the rest
(pid file ``<state>/apiserver-forwarder.pid``, log ``<state>/apiserver-forwarder.log``) and is
stopped by ``down``. :func:`status` probes the components' health endpoints from inside the
namespace (a socket made on a short-lived thread that joined it) and the API server once more
through the forwarder. ``down`` stops the training operator, the components, the forwarder, then
anything else still inside the namespace, and finally unmounts and deletes the namespace file.

Running a process inside the lab namespace: :func:`netns_popen` (``nsenter --net=<state>/netns``)
and :func:`netns_path`. This is how a webhook is tested, including one "whose backend is not up
yet, then comes up"::

    # a ValidatingWebhookConfiguration with failurePolicy Fail and
    #   clientConfig: {url: "https://127.0.0.1:<port>/validate", caBundle: <CA of the backend's cert>}
    # (the API server runs in the lab namespace, so 127.0.0.1 there is the lab's loopback);
    # creates are refused ("connect: connection refused") until the backend listens (any port but
    # the lab's own, ClusterInfo.ports; nothing on the machine can collide with it):
    backend = cluster.netns_popen(state_dir, [sys.executable, "backend.py", str(port)])
    # ... now creates are allowed or denied as the backend answers; backend.terminate() when done
    # (``down`` also stops anything left inside the namespace).

A webhook pointing at a Service (``clientConfig.service``) makes the API server dial the Service's
ClusterIP, which fails with "network is unreachable" (or "service ... not found" when there is no
such Service): use ``url`` webhooks with a backend started by :func:`netns_popen` instead.

State layout under ``state_dir``::

    netns                      the lab's network namespace (an nsfs bind mount while up)
    apiserver-forwarder.pid    the forwarder (root 127.0.0.1:<port> -> lab 127.0.0.1:<port>), and
    apiserver-forwarder.log    its log
    kwok/                      KWOK_WORKDIR (kwok/clusters/mlplat-lab/{kwok.yaml,pids,logs,pki,etcd},
                               kwok/kubeconfig: kwokctl's own; callers get theirs at their path)
    kwokctl.yaml               the configuration given to kwokctl create
    cluster.json               what up() was asked for (nodes, logs file, kubeconfig)
    logs/default.log           the default pod log file (CRI format, see write_pod_log)
    training-operator/         pid files, logs, certificates (tmp/ is bind-mounted for the operator)

Needs root (CAP_SYS_ADMIN for the namespaces and the bind mount) and util-linux's ``nsenter``.
Recipe and pitfalls: ``shared/reference/lab-control-plane.md`` §4-5.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import datetime as dt
import errno
import fcntl
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mlplat.lab.build import VERSIONS, ensure_binaries, training_operator_crds

CLUSTER_NAME = "mlplat-lab"
CONTEXT_NAME = "mlplat-lab"
FIELD_MANAGER = "mlplat-lab"
LAB_LABEL = "mlplat.io/lab"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok-controller")
# status() rows beyond COMPONENTS that a running cluster needs (see "Network isolation" above).
NETNS_ROW = "network-namespace"
FORWARDER_ROW = "apiserver-forwarder"
STAGES_FILE = Path(__file__).with_name("kwok_stages.yaml")
OPERATOR_NAMESPACE = "kubeflow"
OPERATOR_SECRET = "training-operator-webhook-cert"
OPERATOR_SCHEMES = ("pytorchjob", "tfjob")

Progress = Callable[[str], None]


class LabClusterError(RuntimeError):
    """The lab cluster could not be brought to the asked state.

    ``permanent`` is True when retrying cannot help (a wrong argument, a missing privilege).
    """

    def __init__(self, message: str, *, permanent: bool = False):
        super().__init__(message)
        self.permanent = permanent


@dataclass
class ClusterInfo:
    """What :func:`up` started: where things are and how to reach the API server."""

    name: str
    state_dir: Path
    workdir: Path  # KWOK_WORKDIR
    cluster_dir: Path  # <workdir>/clusters/<name>
    kubeconfig: Path
    server: str  # https://127.0.0.1:<port>
    nodes: list[str]
    logs_file: Path
    kubectl: Path
    reused: bool = False  # True when up() found the cluster already running
    ports: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Paths and small helpers


def _paths(state_dir: Path) -> dict[str, Path]:
    state_dir = Path(state_dir).resolve()
    workdir = state_dir / "kwok"
    return {
        "state": state_dir,
        "workdir": workdir,
        "cluster": workdir / "clusters" / CLUSTER_NAME,
        "config": state_dir / "kwokctl.yaml",
        "record": state_dir / "cluster.json",
        "logs": state_dir / "logs",
        "operator": state_dir / "training-operator",
        "netns": state_dir / "netns",
        "forwarder_pid": state_dir / "apiserver-forwarder.pid",
        "forwarder_log": state_dir / "apiserver-forwarder.log",
        # kwokctl merges a context into a kubeconfig (default ~/.kube/config) and `delete` refuses
        # an empty path, so it gets one of its own inside the work dir.
        "kwok_kubeconfig": workdir / "kubeconfig",
    }


def _process_alive(pid: int) -> bool:
    """True when ``pid`` runs and is not a zombie (PID 1 here may never reap kwokctl's orphans)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _kwokctl_env(binaries: dict[str, Path], workdir: Path) -> dict[str, str]:
    # KWOK_* variables override the --config file (flags > env > config), so a stray KWOK_RUNTIME
    # or KWOK_KUBE_VERSION in the caller's environment must not leak in. kwokctl looks kubectl up
    # on PATH before its configured binary (pkg/kwokctl/runtime/cluster_tools.go, KubectlPath), so
    # ours goes first on PATH.
    env = {k: v for k, v in os.environ.items() if not k.startswith("KWOK_")}
    env["KWOK_WORKDIR"] = str(workdir)
    env["KWOK_KUBECTL_BINARY"] = str(binaries["kubectl"])
    env["PATH"] = f"{binaries['kubectl'].parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _run(cmd: list[str], *, env: dict | None = None, input: str | None = None, timeout: float = 120,
         check: bool = True) -> subprocess.CompletedProcess:
    try:
        out = subprocess.run(cmd, env=env, input=input, capture_output=True, text=True, timeout=timeout,
                             check=False)
    except subprocess.TimeoutExpired as e:
        raise LabClusterError(f"lab cluster | `{' '.join(cmd[:4])} ...` timed out after {timeout}s") from e
    if check and out.returncode != 0:
        raise LabClusterError(
            f"lab cluster | `{' '.join(cmd)}` failed (rc={out.returncode}): "
            f"{(out.stderr or out.stdout).strip()[-2000:]}"
        )
    return out


def kubectl(binaries: dict[str, Path], kubeconfig: Path, *args: str, input: str | None = None,
            timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    """Run the lab's own kubectl against ``kubeconfig``; raises LabClusterError on failure if ``check``."""
    return _run([str(binaries["kubectl"]), "--kubeconfig", str(kubeconfig), *args],
                input=input, timeout=timeout, check=check)


def write_pod_log(path: Path, text: str, stream: str = "stdout") -> Path:
    """Write ``text`` to ``path`` as a container log in CRI format, which is what kwok serves.

    kwok reads log files with the kubelet's CRI log parser (k8s.io/cri-client/pkg/logs, used by
    sigs.k8s.io/kwok@v0.8.0 pkg/kwok/server/debugging_logs.go), so each line must look like
    ``2026-01-01T00:00:00Z stdout F <line>``; a plain text file yields nothing. Returns ``path``.
    """
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    lines = text.splitlines() or [""]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{now} {stream} F {line}\n" for line in lines))
    tmp.replace(path)
    return path


def pod_logs_manifest(namespace: str, pod: str, logs_file: Path) -> dict:
    """A kwok ``Logs`` object that serves ``logs_file`` for one pod (apply it with kubectl).

    The lab enables the namespaced ``Logs`` CRD, so per-pod log files can be chosen at run time;
    a ``Logs`` named after the pod wins over the cluster-wide default file. The file must be in
    CRI format (:func:`write_pod_log`).
    """
    return {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "Logs",
        "metadata": {"name": pod, "namespace": namespace},
        "spec": {"logs": [{"logsFile": str(Path(logs_file).resolve()), "follow": True}]},
    }


# --------------------------------------------------------------------------------------------
# The lab's network namespace (see "Network isolation" in the module docstring)

_CLONE_NEWNS = 0x00020000
_CLONE_NEWNET = 0x40000000
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MS_PRIVATE = 0x40000
_MNT_DETACH = 0x2
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_PROBE_ADDRESS = ("10.0.0.1", 443)  # kube-apiserver's default Service range (10.0.0.0/24)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _libc_call(fn, *args) -> None:
    if fn(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def netns_path(state_dir: Path) -> Path:
    """The file holding the lab cluster's network namespace (a bind mount while the cluster is up).

    Enter it with ``nsenter --net=<path> <command>`` (what :func:`netns_popen` does), e.g.
    ``nsenter --net=<state>/netns ip -o link`` or ``... ss -ltnp`` to look inside.
    """
    return _paths(state_dir)["netns"]


def _unescape_mountinfo(field_: str) -> str:
    # /proc/self/mountinfo writes space, tab, newline and backslash as \ooo octal escapes.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_)


def _netns_mounted(path: Path) -> bool:
    """True when a namespace is mounted on ``path`` (in this process's mount namespace)."""
    target = str(Path(path).resolve())
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        parts = line.split(" ")
        if len(parts) > 4 and _unescape_mountinfo(parts[4]) == target:
            fstype = line.split(" - ", 1)[1].split(" ", 1)[0] if " - " in line else ""
            if fstype in ("nsfs", "proc"):  # nsfs; "proc" on kernels before 3.19
                return True
    return False


def _on_netns_thread(path: Path | None, fn: Callable[[], object]) -> object:
    """Run ``fn`` on a short-lived thread that first joined the namespace at ``path`` (or, with
    ``path=None``, a brand-new network namespace); the caller's own threads never change namespace.

    Namespaces are per thread, and a socket keeps the namespace it was created in, so a socket
    made here can be used from any thread afterwards.
    """
    result: dict[str, object] = {}

    def body() -> None:
        try:
            libc = _libc()
            if path is None:
                _libc_call(libc.unshare, _CLONE_NEWNET)
            else:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    _libc_call(libc.setns, fd, _CLONE_NEWNET)
                finally:
                    os.close(fd)
            result["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the calling thread
            result["error"] = e

    t = threading.Thread(target=body, name="mlplat-lab-netns", daemon=True)
    t.start()
    t.join()
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result.get("value")


def _links_here() -> list[str]:
    """Interface names of the calling thread's network namespace."""
    rows = Path(f"/proc/self/task/{threading.get_native_id()}/net/dev").read_text().splitlines()[2:]
    return [r.split(":", 1)[0].strip() for r in rows if r.strip()]


def _unreachable_here() -> str:
    """connect() to a Service-range address from the calling thread; returns the error's name."""
    with socket.socket() as s:
        s.settimeout(3)
        try:
            s.connect(_PROBE_ADDRESS)
        except OSError as e:
            return errno.errorcode.get(e.errno or 0, str(e))
    return "connected"


def _create_netns(path: Path) -> None:
    """A new network namespace with only ``lo`` (up), bind-mounted on ``path``.

    Checked before it is used: ``lo`` is its only interface and a connect() to 10.0.0.1:443 fails
    with ENETUNREACH (no route), i.e. the lab cannot send anything beyond loopback.
    """
    path = Path(path)
    if _netns_mounted(path):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o400)
        os.close(fd)

    def make() -> tuple[list[str], str]:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            flags = struct.unpack("16sH", fcntl.ioctl(s, _SIOCGIFFLAGS, struct.pack("16sH", b"lo", 0)))[1]
            fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | _IFF_UP))
        links, unreachable = _links_here(), _unreachable_here()
        if links == ["lo"] and unreachable == "ENETUNREACH":
            src = f"/proc/self/task/{threading.get_native_id()}/ns/net".encode()
            _libc_call(_libc().mount, src, str(path).encode(), None, _MS_BIND, None)
        return links, unreachable

    try:
        links, unreachable = _on_netns_thread(None, make)  # type: ignore[misc]
    except OSError as e:
        path.unlink(missing_ok=True)
        raise LabClusterError(f"lab cluster | cannot create the lab's network namespace ({e}); "
                              f"the lab needs root (CAP_SYS_ADMIN)", permanent=True) from e
    if not _netns_mounted(path):
        path.unlink(missing_ok=True)
        raise LabClusterError(
            f"lab cluster | a new network namespace is not isolated as expected (interfaces {links}, "
            f"connect to {_PROBE_ADDRESS[0]}:{_PROBE_ADDRESS[1]}: {unreachable}; want only lo and "
            f"ENETUNREACH)", permanent=True)


def _delete_netns(path: Path) -> None:
    """Unmount the namespace from ``path`` and delete the file (the namespace goes with its last
    process). Harmless when absent."""
    path = Path(path)
    libc = _libc()
    for _ in range(10):
        if not _netns_mounted(path):
            break
        try:
            _libc_call(libc.umount2, str(path).encode(), 0)
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise LabClusterError(f"lab cluster | cannot unmount {path}: {e}") from e
            _libc_call(libc.umount2, str(path).encode(), _MNT_DETACH)
    if _netns_mounted(path):
        raise LabClusterError(f"lab cluster | {path} is still mounted")
    # Unlinking also detaches copies of the mount in other mount namespaces (Linux >= 3.18).
    path.unlink(missing_ok=True)


def _netns_id(path: Path) -> tuple[int, int] | None:
    if not _netns_mounted(path):
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _netns_pids(path: Path) -> list[int]:
    """Processes whose network namespace is the lab's (read from /proc/<pid>/ns/net)."""
    ident = _netns_id(path)
    if ident is None:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == ident and _process_alive(int(entry)):
            pids.append(int(entry))
    return pids


def _nsenter(path: Path, argv: list[str]) -> list[str]:
    nsenter = shutil.which("nsenter") or "/usr/bin/nsenter"
    return [nsenter, f"--net={path}", "--", *[str(a) for a in argv]]


def netns_popen(state_dir: Path, argv: list[str], **popen_kw) -> subprocess.Popen:
    """Start ``argv`` inside the lab cluster's network namespace; returns its ``Popen``.

    ``nsenter --net=<state>/netns -- argv``: nsenter joins the namespace and execs ``argv``, so
    the returned pid is the command's own. Everything in ``popen_kw`` (stdout, env, cwd,
    pass_fds, start_new_session, ...) is given to :class:`subprocess.Popen`. Inside, 127.0.0.1 is
    the lab's loopback, where the API server (and only the lab) lives: a webhook backend started
    this way on ``127.0.0.1:<port>`` is reached by the API server at ``https://127.0.0.1:<port>``
    and by nothing on the machine. ``down`` stops whatever is still running in the namespace.
    Raises :class:`LabClusterError` when the cluster (its namespace) is not up.
    """
    path = netns_path(state_dir)
    if not _netns_mounted(path):
        raise LabClusterError(f"lab cluster | no network namespace at {path}: run lab up first")
    argv = [str(a) for a in argv]
    env = popen_kw.get("env")
    if argv and "/" not in argv[0] and not shutil.which(argv[0], path=(env if env is not None else os.environ)
                                                        .get("PATH", os.defpath)):
        # As Popen itself would, rather than nsenter exiting with 127.
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", argv[0])
    return subprocess.Popen(_nsenter(path, argv), **popen_kw)


def _netns_connect(path: Path, address: tuple[str, int], timeout: float | None = None,
                   source_address=None) -> socket.socket:
    """A TCP connection to ``address`` as seen inside the lab namespace (``socket.create_connection``'s
    signature, so ``http.client`` can use it)."""
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = _on_netns_thread(path, lambda: socket.socket(family, socket.SOCK_STREAM))
    assert isinstance(sock, socket.socket)
    try:
        sock.settimeout(timeout)
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


# --------------------------------------------------------------------------------------------
# Configuration


def _kwokctl_config(binaries: dict[str, Path], workdir: Path, logs_file: Path, ports: dict[str, int]) -> str:
    options = {
        **ports,
        "runtime": "binary",
        # kwokctl defaults to 0.0.0.0 (pkg/apis/config/v1alpha1 zz_generated.defaults.go); this
        # single knob moves every component (etcd, apiserver, kcm, scheduler, kwok) to loopback.
        "bindAddress": "127.0.0.1",
        "kubeVersion": VERSIONS["kubernetes"],
        "etcdVersion": VERSIONS["etcd"].lstrip("v"),
        "kwokVersion": VERSIONS["kwok"],
        "kubeApiserverBinary": str(binaries["kube-apiserver"]),
        "kubeControllerManagerBinary": str(binaries["kube-controller-manager"]),
        "kubeSchedulerBinary": str(binaries["kube-scheduler"]),
        "kubectlBinary": str(binaries["kubectl"]),
        "kwokControllerBinary": str(binaries["kwok"]),
        "etcdBinary": str(binaries["etcd"]),
        "cacheDir": str(workdir / "cache"),
        # Namespaced Logs are read from the API (per-pod log files chosen at run time); the
        # cluster-wide default below stays static in the config (a kind is either, not both).
        "enableCRDs": ["Logs"],
    }
    # The lab's network namespace has no route: with --bind-address=127.0.0.1 and no
    # --advertise-address, kube-apiserver looks for the default route's interface to advertise
    # (apimachinery util/net ChooseHostInterface) and exits with "unable to find suitable network
    # address". Nothing dials the advertised address in the lab.
    patches = [{"name": "kube-apiserver", "extraArgs": [{"key": "advertise-address", "value": "127.0.0.1"}]}]
    docs = [
        {"apiVersion": "config.kwok.x-k8s.io/v1alpha1", "kind": "KwokctlConfiguration", "options": options,
         "componentsPatches": patches},
        *yaml.safe_load_all(STAGES_FILE.read_text()),
        {
            "apiVersion": "kwok.x-k8s.io/v1alpha1",
            "kind": "ClusterLogs",
            "metadata": {"name": "mlplat-lab-default-logs"},
            "spec": {"selector": {}, "logs": [{"logsFile": str(logs_file), "follow": True}]},
        },
    ]
    return yaml.dump_all(docs, Dumper=_BlockDumper, sort_keys=False)


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings (the Stages' Go templates) as readable ``|`` blocks."""


_BlockDumper.add_representer(
    str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None))


def _node_manifest(node: dict) -> dict:
    name = node["name"]
    roles = node.get("roles") or []
    labels = {
        LAB_LABEL: "true",
        "type": "kwok",
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        **{f"node-role.kubernetes.io/{r}": "" for r in roles},
    }
    resources = {
        "cpu": str(node.get("cpu", 32)),
        "memory": str(node.get("memory", "256Gi")),
        "pods": str(node.get("pods", 110)),
        "ephemeral-storage": "1Ti",
    }
    if int(node.get("gpus", 0)) > 0:
        resources["nvidia.com/gpu"] = str(int(node["gpus"]))
    # No taint (training-operator pods carry no toleration) and no status.addresses: kwok's
    # node-initialize then adds Hostname=localhost, which is how the API server reaches kwok's
    # fake kubelet port for `kubectl logs` (reference §4.5).
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": {"kwok.x-k8s.io/node": "fake"}},
        "spec": {},
        "status": {"capacity": resources, "allocatable": dict(resources)},
    }


def _validate_nodes(nodes: list[dict]) -> None:
    problems = []
    seen = set()
    for i, n in enumerate(nodes):
        name = n.get("name") if isinstance(n, dict) else None
        if not name or not isinstance(name, str):
            problems.append(f"nodes[{i}]: needs a name")
            continue
        if name in seen:
            problems.append(f"nodes[{i}]: duplicate name {name!r}")
        seen.add(name)
        try:
            if int(n.get("gpus", 0)) < 0:
                raise ValueError
        except (TypeError, ValueError):
            problems.append(f"nodes[{i}] {name}: gpus must be a whole number >= 0, got {n.get('gpus')!r}")
        if not isinstance(n.get("roles", []), (list, tuple)):
            problems.append(f"nodes[{i}] {name}: roles must be a list such as ['worker']")
    if not nodes:
        problems.append("nodes: at least one node is needed")
    if problems:
        raise LabClusterError("lab cluster | invalid nodes:\n  " + "\n  ".join(problems), permanent=True)


# --------------------------------------------------------------------------------------------
# Component health


def _components(cluster_dir: Path) -> dict[str, dict]:
    """Component name -> {binary, args, pid} from kwokctl's saved configuration."""
    try:
        docs = list(yaml.safe_load_all((cluster_dir / "kwok.yaml").read_text()))
    except (OSError, yaml.YAMLError):
        return {}
    conf = next((d for d in docs if d and d.get("kind") == "KwokctlConfiguration"), {}) or {}
    out = {}
    for c in conf.get("components") or []:
        binary = c.get("binary", "")
        pid = _read_pid(cluster_dir / "pids" / f"{Path(binary).name}.pid")
        out[c["name"]] = {"binary": binary, "args": c.get("args") or [], "pid": pid}
    return out


def _configured_logs_file(cluster_dir: Path) -> str | None:
    """The default log file kwok was started with (kwok reads its config once, at start)."""
    try:
        docs = yaml.safe_load_all((cluster_dir / "kwok.yaml").read_text())
        for d in docs:
            if d and d.get("kind") == "ClusterLogs":
                return d["spec"]["logs"][0]["logsFile"]
    except (OSError, yaml.YAMLError, KeyError, IndexError, TypeError):
        pass
    return None


def _arg(args: list[str], flag: str) -> str | None:
    for a in args:
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def _port_of(name: str, args: list[str]) -> int | None:
    value = {
        "etcd": lambda: _arg(args, "--listen-client-urls"),
        "kube-apiserver": lambda: _arg(args, "--secure-port"),
        "kube-controller-manager": lambda: _arg(args, "--secure-port"),
        "kube-scheduler": lambda: _arg(args, "--secure-port"),
        "kwok-controller": lambda: _arg(args, "--server-address"),
    }.get(name, lambda: None)()
    if not value:
        return None
    try:
        return int(value.rsplit(":", 1)[-1].split(",")[0].rstrip("/"))
    except ValueError:
        return None


def _probe(url: str, context: ssl.SSLContext | None = None, netns: Path | None = None) -> tuple[bool, str]:
    """GET ``url``; True when it answers 200. With ``netns``, the connection is made inside that
    network namespace (the lab's), from a socket created there."""
    u = urllib.parse.urlsplit(url)
    if u.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(u.hostname, u.port, timeout=3,
                                                                       context=context)
    else:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=3)
    if netns is not None:
        conn._create_connection = (  # type: ignore[attr-defined]  # what HTTPConnection.connect() calls
            lambda address, timeout=None, source_address=None: _netns_connect(netns, address, timeout))
    try:
        conn.request("GET", u.path or "/")
        r = conn.getresponse()
        body = r.read(200).decode(errors="replace").strip()
        return r.status == 200, f"{r.status} {body}"
    except (OSError, http.client.HTTPException, ValueError) as e:
        return False, str(e) or type(e).__name__
    finally:
        conn.close()


def _insecure_tls() -> ssl.SSLContext:
    # kcm, scheduler and kwok serve self-signed certificates on loopback; only liveness is read.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _apiserver_tls(cluster_dir: Path) -> ssl.SSLContext:
    pki = cluster_dir / "pki"
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    return ctx


def status(state_dir: Path) -> list[dict]:
    """Health of each lab component: ``[{component, ok, detail}]``.

    Covers the lab's network namespace (``network-namespace``: mounted, only ``lo``), etcd,
    kube-apiserver, kube-controller-manager, kube-scheduler and kwok-controller (process alive from
    kwokctl's pid file, then the component's own health endpoint on 127.0.0.1 inside the
    namespace), the ``apiserver-forwarder`` (alive, and the API server's /readyz answered through it
    on the machine's 127.0.0.1), plus training-operator when it was started. Never raises for a
    stopped cluster.
    """
    p = _paths(state_dir)
    comps = _components(p["cluster"])
    netns = p["netns"]
    rows = []
    if _netns_mounted(netns):
        try:
            links = _on_netns_thread(netns, _links_here)
            rows.append({"component": NETNS_ROW, "ok": links == ["lo"], "detail": f"{netns}: interfaces {links}"})
        except OSError as e:
            rows.append({"component": NETNS_ROW, "ok": False, "detail": f"{netns}: cannot enter: {e}"})
    else:
        rows.append({"component": NETNS_ROW, "ok": False, "detail": f"not created (run lab up): {netns}"})
    inside = netns if rows[0]["ok"] else None
    for name in COMPONENTS:
        c = comps.get(name)
        if c is None:
            rows.append({"component": name, "ok": False, "detail": "not created (run lab up)"})
            continue
        pid = c["pid"]
        if not pid or not _process_alive(pid):
            rows.append({"component": name, "ok": False, "detail": f"not running (pid {pid or '-'})"})
            continue
        port = _port_of(name, c["args"])
        if inside is None:
            ok, said = False, "the lab's network namespace is missing"
        elif name == "etcd":
            ok, said = _probe(f"http://127.0.0.1:{port}/health", netns=inside)
        elif name == "kube-apiserver":
            try:
                ok, said = _probe(f"https://127.0.0.1:{port}/readyz", _apiserver_tls(p["cluster"]), netns=inside)
            except (OSError, ssl.SSLError) as e:
                ok, said = False, f"cannot read the cluster PKI: {e}"
        elif name == "kwok-controller":
            ok, said = _probe(f"https://127.0.0.1:{port}/healthz", _insecure_tls(), netns=inside)
            if not ok:  # kwok serves plain HTTP when it was given no certificate
                ok, said = _probe(f"http://127.0.0.1:{port}/healthz", netns=inside)
        else:
            ok, said = _probe(f"https://127.0.0.1:{port}/healthz", _insecure_tls(), netns=inside)
        rows.append({"component": name, "ok": ok, "detail": f"pid {pid}, 127.0.0.1:{port} (lab netns): {said}"})
    rows.append(_forwarder_status(p, comps))
    op = _operator_status(p["operator"])
    if op is not None:
        rows.append(op)
    return rows


def _forwarder_status(p: dict[str, Path], comps: dict[str, dict]) -> dict:
    row = {"component": FORWARDER_ROW, "ok": False}
    api = comps.get("kube-apiserver")
    pid = _read_pid(p["forwarder_pid"])
    if pid is None:
        return {**row, "detail": "not created (run lab up)"}
    if not _process_alive(pid) or not any("forward-apiserver" in a for a in _cmdline(pid)):
        return {**row, "detail": f"not running (pid {pid})"}
    if api is None:
        return {**row, "detail": f"pid {pid}: the API server is not created"}
    port = _port_of("kube-apiserver", api["args"])
    try:
        ok, said = _probe(f"https://127.0.0.1:{port}/readyz", _apiserver_tls(p["cluster"]))
    except (OSError, ssl.SSLError) as e:
        ok, said = False, f"cannot read the cluster PKI: {e}"
    return {**row, "ok": ok, "detail": f"pid {pid}, 127.0.0.1:{port} (machine) -> lab netns: {said}"}


def _healthy(state_dir: Path, *, forwarder: bool = True) -> bool:
    """The namespace and every component are healthy (and the forwarder, unless told not to look)."""
    needed = {NETNS_ROW, *COMPONENTS, *([FORWARDER_ROW] if forwarder else [])}
    rows = status(state_dir)
    return all(r["ok"] for r in rows if r["component"] in needed)


# --------------------------------------------------------------------------------------------
# up / down


def _write_kubeconfig(cluster_dir: Path, kubeconfig: Path) -> str:
    """Write a self-contained kubeconfig (certificates embedded); returns the server URL."""
    src = yaml.safe_load((cluster_dir / "kubeconfig.yaml").read_text())
    cluster = src["clusters"][0]["cluster"]
    user = src["users"][0]["user"]

    def embed(d: dict, key: str) -> str:
        return base64.b64encode(Path(d[key]).read_bytes()).decode()

    server = cluster["server"]
    conf = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CONTEXT_NAME, "cluster": {
            "server": server, "certificate-authority-data": embed(cluster, "certificate-authority")}}],
        "users": [{"name": CONTEXT_NAME, "user": {
            "client-certificate-data": embed(user, "client-certificate"),
            "client-key-data": embed(user, "client-key")}}],
        "contexts": [{"name": CONTEXT_NAME, "context": {"cluster": CONTEXT_NAME, "user": CONTEXT_NAME}}],
        "current-context": CONTEXT_NAME,
    }
    kubeconfig = Path(kubeconfig)
    kubeconfig.parent.mkdir(parents=True, exist_ok=True)
    tmp = kubeconfig.with_name(kubeconfig.name + ".tmp")
    tmp.touch(mode=0o600)
    tmp.write_text(yaml.safe_dump(conf, sort_keys=False))
    tmp.replace(kubeconfig)
    return server


def _wait(what: str, check: Callable[[], bool], timeout: float, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            raise LabClusterError(f"lab cluster | timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def _apply_nodes(binaries: dict[str, Path], kubeconfig: Path, nodes: list[dict]) -> None:
    manifests = [_node_manifest(n) for n in nodes]
    kubectl(binaries, kubeconfig, "apply", "--server-side", f"--field-manager={FIELD_MANAGER}",
            "--force-conflicts", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests}))
    # Apply keeps status on create but ignores it on update (status is a subresource), so the GPU
    # counts are set through the status subresource as well; kwok's stages leave them alone.
    for m in manifests:
        patch = {"status": {"capacity": m["status"]["capacity"], "allocatable": m["status"]["allocatable"]}}
        kubectl(binaries, kubeconfig, "patch", "node", m["metadata"]["name"], "--subresource=status",
                "--type=merge", "-p", json.dumps(patch))
    wanted = {n["name"] for n in nodes}
    listed = kubectl(binaries, kubeconfig, "get", "nodes", "-l", f"{LAB_LABEL}=true", "-o", "name").stdout.split()
    stale = [n.split("/", 1)[1] for n in listed if n.split("/", 1)[1] not in wanted]
    if stale:
        kubectl(binaries, kubeconfig, "delete", "node", *stale, "--wait=false")


def _nodes_ready(binaries: dict[str, Path], kubeconfig: Path, names: set[str]) -> bool:
    out = kubectl(binaries, kubeconfig, "get", "nodes", "-o", "json", check=False)
    if out.returncode != 0:
        return False
    ready = set()
    for item in json.loads(out.stdout)["items"]:
        for c in item.get("status", {}).get("conditions") or []:
            if c["type"] == "Ready" and c["status"] == "True":
                ready.add(item["metadata"]["name"])
    return names <= ready


def up(state_dir: Path, kubeconfig: Path, nodes: list[dict], logs_file: Path | None = None, *,
       binaries: dict[str, Path] | None = None, progress: Progress = print, timeout: float = 180) -> ClusterInfo:
    """Start the lab cluster (or find it running) and make its nodes match ``nodes``.

    ``nodes``: ``[{"name": "lab-1", "gpus": 8, "roles": ["control-plane", "worker"]}, ...]``
    (optional ``cpu``, ``memory``, ``pods``). Each becomes a fake Node with ``nvidia.com/gpu``
    capacity/allocatable, ``node-role.kubernetes.io/<role>`` labels and ``mlplat.io/lab=true``;
    lab nodes not in the list are deleted. ``logs_file`` (default ``<state>/logs/default.log``)
    is what ``kubectl logs`` returns for any pod; it must be CRI format (:func:`write_pod_log`)
    and is fixed for the cluster's lifetime (``down`` first to change it). The kubeconfig, with
    certificates embedded, is written to ``kubeconfig``. Calling ``up`` on a running cluster only
    reconciles nodes and the kubeconfig. Raises :class:`LabClusterError`.
    """
    t0 = time.monotonic()
    _validate_nodes(nodes)
    p = _paths(state_dir)
    binaries = binaries or ensure_binaries(progress=progress)
    logs_file = Path(logs_file).resolve() if logs_file else p["logs"] / "default.log"
    p["state"].mkdir(parents=True, exist_ok=True)
    if not logs_file.exists():
        write_pod_log(logs_file, "mlplat lab: no log file was chosen for this pod")

    created = (p["cluster"] / "kwok.yaml").exists()
    serving = _configured_logs_file(p["cluster"]) if created else None
    if serving and serving != str(logs_file):
        raise LabClusterError(
            f"lab cluster | the existing cluster serves logs from {serving}, not {logs_file}: "
            f"run lab down first to change it", permanent=True)

    env = _kwokctl_env(binaries, p["workdir"])
    reused = created and _healthy(state_dir, forwarder=False)
    if reused:
        progress(f"lab cluster | {CLUSTER_NAME} | already running in {p['cluster']}")
        if not _forwarder_status(p, _components(p["cluster"]))["ok"]:
            progress(f"lab cluster | {CLUSTER_NAME} | restarting the API server forwarder")
            _stop_forwarder(p)
            _start_forwarder_or_fail(p, _api_port(p))
            _wait_healthy(state_dir, timeout)
    elif created:
        # Processes died (a reboot, a crash): restart all of them from the saved configuration.
        # `start`, not `create`: create on an existing cluster re-applies the Logs CRD without a
        # resourceVersion and fails (kwok v0.8.0 pkg/kwokctl/snapshot/load.go).
        progress(f"lab cluster | {CLUSTER_NAME} | restarting with kwokctl")
        _stop_components(p["cluster"])
        _stop_forwarder(p)
        if not _netns_mounted(p["netns"]):
            # A new namespace (after a reboot, or a cluster made before the lab had one): an
            # operator left in another namespace could not reach this one's API server.
            stop_training_operator(state_dir, progress=progress)
            _create_netns(p["netns"])
        _start_forwarder_or_fail(p, _api_port(p))
        _advertise_loopback(p["cluster"])
        _run(_nsenter(p["netns"], [str(binaries["kwokctl"]), "start", "cluster", "--name", CLUSTER_NAME,
                                   "--wait", f"{int(timeout)}s"]),
             env=env, timeout=timeout + 30)
        _wait_healthy(state_dir, timeout)
    else:
        _create(p, binaries, env, logs_file, progress, timeout)
    server = _write_kubeconfig(p["cluster"], Path(kubeconfig))
    # Pods are refused until the service-account controller created the namespace's "default".
    _wait("the default service account",
          lambda: kubectl(binaries, kubeconfig, "get", "serviceaccount", "default", check=False).returncode == 0,
          timeout)
    _apply_nodes(binaries, Path(kubeconfig), nodes)
    names = {n["name"] for n in nodes}
    _wait(f"nodes {sorted(names)} to be Ready", lambda: _nodes_ready(binaries, Path(kubeconfig), names), timeout)
    p["record"].write_text(json.dumps({
        "kubeconfig": str(Path(kubeconfig).resolve()), "logs_file": str(logs_file), "nodes": nodes}, indent=2))
    comps = _components(p["cluster"])
    info = ClusterInfo(
        name=CLUSTER_NAME, state_dir=p["state"], workdir=p["workdir"], cluster_dir=p["cluster"],
        kubeconfig=Path(kubeconfig).resolve(), server=server, nodes=sorted(names), logs_file=logs_file,
        kubectl=binaries["kubectl"], reused=reused,
        ports={n: _port_of(n, c["args"]) for n, c in comps.items()},
    )
    progress(f"lab cluster | {CLUSTER_NAME} | ready at {server} with {len(names)} nodes "
             f"in {time.monotonic() - t0:.1f}s")
    return info


def _pick_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports, random, below the kernel's ephemeral range.

    kwokctl's own choice scans down from 32767, so two clusters created at the same moment on one
    machine (parallel test sessions) pick the same ports; a random choice makes that unlikely,
    and :func:`_create` retries with new ports when it happens anyway.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.SystemRandom()
    ports: list[int] = []
    while len(ports) < count:
        port = rng.randrange(20000, max(low, 20000 + count * 10))
        if port in ports:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
    return ports


def _create(p: dict[str, Path], binaries: dict[str, Path], env: dict[str, str], logs_file: Path,
            progress: Progress, timeout: float, attempts: int = 3) -> None:
    """A new cluster in a new network namespace. Ports only matter on the machine's side (the
    forwarder's); inside the namespace nothing else listens. Anything failed is torn down."""
    _create_netns(p["netns"])
    try:
        for attempt in range(1, attempts + 1):
            names = ("kubeApiserverPort", "etcdPort", "etcdPeerPort", "kubeControllerManagerPort",
                     "kubeSchedulerPort", "kwokControllerPort")
            ports = dict(zip(names, _pick_ports(len(names)), strict=True))
            try:
                # First, so that the machine's 127.0.0.1:<port> is held before anything uses it.
                _start_forwarder(p, ports["kubeApiserverPort"])
            except OSError as e:
                if attempt == attempts:
                    raise LabClusterError(f"lab cluster | no free port for the API server forwarder: {e}") from e
                progress(f"lab cluster | {CLUSTER_NAME} | 127.0.0.1:{ports['kubeApiserverPort']} was taken "
                         f"({e}), retrying with other ports")
                continue
            progress(f"lab cluster | {CLUSTER_NAME} | creating with kwokctl in network namespace {p['netns']} "
                     f"(API server on 127.0.0.1:{ports['kubeApiserverPort']})")
            p["config"].write_text(_kwokctl_config(binaries, p["workdir"], logs_file, ports))
            try:
                _run(_nsenter(p["netns"], [
                    str(binaries["kwokctl"]), "create", "cluster", "--name", CLUSTER_NAME,
                    "--config", str(p["config"]), "--kubeconfig", str(p["kwok_kubeconfig"]),
                    "--wait", f"{int(timeout)}s"]), env=env, timeout=timeout + 30)
                _wait_healthy(p["state"], timeout)
                return
            except LabClusterError as e:
                _delete_cluster(p, progress=lambda s: None)
                _stop_forwarder(p)
                _stop_netns_processes(p, progress=lambda s: None)
                if attempt == attempts:
                    raise
                progress(f"lab cluster | {CLUSTER_NAME} | attempt {attempt} failed, retrying with other ports: {e}")
    except BaseException:
        # A cluster that never came up leaves nothing behind (no forwarder, no namespace).
        with contextlib.suppress(LabClusterError, OSError):
            _stop_forwarder(p)
            if not _stop_netns_processes(p, progress=lambda s: None):
                _delete_netns(p["netns"])
        raise


def _advertise_loopback(cluster_dir: Path) -> None:
    """Give kube-apiserver ``--advertise-address=127.0.0.1`` in kwokctl's saved configuration, which
    ``kwokctl start`` runs the components from, when it lacks it (a cluster created before the lab
    had its own network namespace): in the namespace it cannot start without (see _kwokctl_config)."""
    path = cluster_dir / "kwok.yaml"
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    conf = next((d for d in docs if d.get("kind") == "KwokctlConfiguration"), {})
    changed = False
    for c in conf.get("components") or []:
        args = c.setdefault("args", []) if c.get("name") == "kube-apiserver" else None
        if args is not None and not any(str(a).startswith("--advertise-address") for a in args):
            args.append("--advertise-address=127.0.0.1")
            changed = True
    if changed:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(yaml.dump_all(docs, Dumper=_BlockDumper, sort_keys=False))
        tmp.replace(path)


def _api_port(p: dict[str, Path]) -> int:
    port = _port_of("kube-apiserver", _components(p["cluster"]).get("kube-apiserver", {}).get("args", []))
    if not port:
        raise LabClusterError(f"lab cluster | no kube-apiserver port in {p['cluster'] / 'kwok.yaml'}")
    return port


def _wait_healthy(state_dir: Path, timeout: float) -> None:
    """Wait for every component to answer its health check; fail at once when one has exited.

    kwokctl does not supervise its processes, so a component that exited (a port taken, a bad
    flag) never comes back; its log tail goes into the error.
    """
    deadline = time.monotonic() + timeout
    while True:
        rows = [r for r in status(state_dir) if r["component"] in (NETNS_ROW, *COMPONENTS, FORWARDER_ROW)]
        if all(r["ok"] for r in rows):
            return
        dead = [r for r in rows if r["detail"].startswith(("not running", "not created"))]
        if dead or time.monotonic() > deadline:
            p = _paths(state_dir)
            logs = {r["component"]: p["cluster"] / "logs" / f"{r['component']}.log" for r in rows}
            logs[FORWARDER_ROW] = p["forwarder_log"]
            details = "\n".join(
                f"  {r['component']}: {r['detail']}\n    log tail: {_tail(logs[r['component']])}"
                for r in (dead or [r for r in rows if not r["ok"]]))
            why = "exited" if dead else f"not healthy after {timeout:.0f}s"
            raise LabClusterError(f"lab cluster | control-plane components {why}:\n{details}")
        time.sleep(0.5)


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])[-600:]
    except OSError:
        return "(no log)"


def _terminate(pid: int, expect: str, timeout: float = 15) -> None:
    """SIGTERM ``pid`` if its command line mentions ``expect`` (never a reused pid), then SIGKILL."""
    if not _process_alive(pid) or not any(expect in a for a in _cmdline(pid)):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _process_alive(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    if _process_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        _wait_gone([pid], 10)


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait until none of ``pids`` runs; returns those still running after ``timeout``.

    A killed kube-apiserver takes a moment to exit, and while it does its /proc cmdline is empty.
    """
    deadline = time.monotonic() + timeout
    while (alive := [p for p in pids if _process_alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def _stop_components(cluster_dir: Path) -> None:
    """Stop what is left of a broken cluster and drop its pid files, so kwokctl restarts it all.

    kwokctl skips a component whose pid file names a live process, and it counts a zombie as
    live (signal 0 succeeds; PID 1 here does not always reap kwokctl's orphans).
    """
    for c in _components(cluster_dir).values():
        if c["pid"]:
            _terminate(c["pid"], Path(c["binary"]).name)
        (cluster_dir / "pids" / f"{Path(c['binary']).name}.pid").unlink(missing_ok=True)


def down(state_dir: Path, *, progress: Progress = print) -> None:
    """Stop the training operator and every cluster process; delete the cluster's data.

    Uses kwokctl's pid files (never process names), then checks each recorded pid is gone and
    stops any survivor itself. Then the API server forwarder, then any process still inside the
    lab's network namespace (e.g. a webhook backend a test started with :func:`netns_popen`),
    and finally the namespace itself (unmounted, file deleted): nothing is left running or
    mounted. Logs under ``<state>/logs`` and the kubeconfig are left in place.
    """
    p = _paths(state_dir)
    errors = []
    for step in (lambda: stop_training_operator(state_dir, progress=progress),
                 lambda: _delete_cluster(p, progress),
                 lambda: _stop_forwarder(p, progress)):
        try:
            step()
        except LabClusterError as e:
            errors.append(str(e))
    left = _stop_netns_processes(p, progress)
    if left:
        errors.append(f"lab cluster | still running in the lab's network namespace: {left}")
    else:
        try:
            if _netns_mounted(p["netns"]):
                progress(f"lab cluster | {CLUSTER_NAME} | network namespace {p['netns']} deleted")
            _delete_netns(p["netns"])
        except LabClusterError as e:
            errors.append(str(e))
    if errors:
        raise LabClusterError("\n".join(errors))


def _delete_cluster(p: dict[str, Path], progress: Progress) -> None:
    comps = _components(p["cluster"])
    if not comps and not p["cluster"].exists():
        progress(f"lab cluster | {CLUSTER_NAME} | not present")
        return
    kwokctl_bin = _find_kwokctl(comps)
    failed = "no kwokctl binary found (run lab build)"
    if kwokctl_bin:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KWOK_")}
        env["KWOK_WORKDIR"] = str(p["workdir"])
        cmd = [kwokctl_bin, "delete", "cluster", "--name", CLUSTER_NAME, "--kubeconfig", str(p["kwok_kubeconfig"])]
        if _netns_mounted(p["netns"]):
            cmd = _nsenter(p["netns"], cmd)
        out = _run(cmd, env=env, timeout=120, check=False)
        failed = "" if out.returncode == 0 else f"kwokctl delete failed: {(out.stderr or out.stdout).strip()[-1000:]}"
    pids = [c["pid"] for c in comps.values() if c["pid"]]
    if _wait_gone(pids, 10):
        for c in comps.values():  # survivors of a failed delete, by recorded pid only
            if c["pid"]:
                _terminate(c["pid"], Path(c["binary"]).name)
    left = [f"{n} (pid {c['pid']})" for n, c in comps.items() if c["pid"] in _wait_gone(pids, 5)]
    if left:
        raise LabClusterError(f"lab cluster | still running after down: {', '.join(left)}")
    if failed:
        raise LabClusterError(f"lab cluster | {CLUSTER_NAME} | processes stopped, but {failed}")
    progress(f"lab cluster | {CLUSTER_NAME} | stopped and deleted")


def _stop_netns_processes(p: dict[str, Path], progress: Progress, timeout: float = 10) -> list[int]:
    """SIGTERM, then SIGKILL, whatever still runs inside the lab's network namespace (only the lab
    and :func:`netns_popen` put processes there); returns the pids that would not go."""
    pids = [pid for pid in _netns_pids(p["netns"]) if pid != os.getpid()]
    if not pids:
        return []
    progress(f"lab cluster | {CLUSTER_NAME} | stopping what still runs in its network namespace: "
             + ", ".join(f"{pid} ({Path(_cmdline(pid)[0]).name if _cmdline(pid) else '?'})" for pid in pids))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while (pids := [pid for pid in pids if _process_alive(pid)]) and time.monotonic() < deadline:
            for pid in pids:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
            time.sleep(0.1)
        if not pids:
            return []
    return pids


def _find_kwokctl(comps: dict[str, dict]) -> str | None:
    # down() must work without rebuilding: use the kwokctl next to the kwok binary kwokctl itself
    # linked into the cluster (a symlink into the build cache), else whatever the cache holds.
    kwok = comps.get("kwok-controller", {}).get("binary")
    if kwok:
        candidate = Path(kwok).resolve().parent / "kwokctl"
        if candidate.exists():
            return str(candidate)
    from mlplat.lab.build import COMPONENTS as BUILD_COMPONENTS
    from mlplat.lab.build import component_dir

    kwok_component = next(c for c in BUILD_COMPONENTS if c.name == "kwok")
    candidate = component_dir(kwok_component) / "kwokctl"
    return str(candidate) if candidate.exists() else None


# --------------------------------------------------------------------------------------------
# The API server forwarder (python -m mlplat.lab.cluster forward-apiserver <json>)


def _start_forwarder(p: dict[str, Path], port: int) -> int:
    """Listen on the machine's 127.0.0.1:``port`` and start the forwarder in the lab namespace
    with that socket; returns its pid. Raises OSError when the port is taken."""
    listener = socket.create_server(("127.0.0.1", port))  # in this process's (the machine's) namespace
    try:
        dev, ino = _netns_id(p["netns"]) or (0, 0)
        spec = {"fd": listener.fileno(), "port": port, "netns": [dev, ino]}
        lib_dir = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [lib_dir, os.environ.get("PYTHONPATH")])))
        with p["forwarder_log"].open("ab") as log:
            proc = netns_popen(p["state"], [sys.executable, "-m", "mlplat.lab.cluster", "forward-apiserver",
                                            json.dumps(spec)],
                               stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(listener.fileno(),),
                               start_new_session=True, env=env, cwd=p["state"])
    finally:
        listener.close()  # the forwarder holds its own copy
    p["forwarder_pid"].write_text(str(proc.pid))
    return proc.pid


def _start_forwarder_or_fail(p: dict[str, Path], port: int) -> int:
    try:
        return _start_forwarder(p, port)
    except OSError as e:
        raise LabClusterError(
            f"lab cluster | cannot listen on 127.0.0.1:{port} for the API server ({e}); the existing "
            f"cluster keeps its port: free it, or run lab down and up") from e


def _stop_forwarder(p: dict[str, Path], progress: Progress = lambda s: None) -> None:
    pid = _read_pid(p["forwarder_pid"])
    if pid is None:
        return
    _terminate(pid, "forward-apiserver", timeout=5)
    if _process_alive(pid) and any("forward-apiserver" in a for a in _cmdline(pid)):
        raise LabClusterError(f"lab cluster | the API server forwarder (pid {pid}) is still running")
    p["forwarder_pid"].unlink(missing_ok=True)
    progress(f"lab cluster | {CLUSTER_NAME} | API server forwarder stopped")


def _forward_apiserver(spec: dict) -> int:
    """The forwarder: accept on the inherited listening socket (the machine's 127.0.0.1:port) and
    splice each connection to 127.0.0.1:port of this process's namespace (the lab's)."""
    here = os.stat("/proc/self/ns/net")
    if [here.st_dev, here.st_ino] != list(spec["netns"]):
        # Outside the lab's namespace it would connect to its own listener, again and again.
        print(f"apiserver forwarder: not in the lab's network namespace {spec['netns']}", flush=True)
        return 3
    listener = socket.socket(fileno=spec["fd"])
    port = spec["port"]
    threading.stack_size(512 * 1024)  # two threads per connection; watches keep them for long
    print(f"apiserver forwarder: pid {os.getpid()}, machine 127.0.0.1:{port} -> lab 127.0.0.1:{port}", flush=True)
    while True:
        try:
            client, _ = listener.accept()
        except OSError as e:  # EMFILE and the like: keep serving
            print(f"apiserver forwarder: accept: {e}", flush=True)
            time.sleep(0.2)
            continue
        threading.Thread(target=_splice, args=(client, port), daemon=True).start()


def _reset(sock: socket.socket) -> None:
    """Close with a TCP RST, so that the peer sees "connection reset" as it would from the real
    server's side (not a clean end of stream)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _splice(client: socket.socket, port: int) -> None:
    try:
        upstream = socket.create_connection(("127.0.0.1", port), timeout=5)
    except OSError:
        _reset(client)  # API server down (restarting): the client sees a reset and retries
        return
    upstream.settimeout(None)  # watches stay idle for minutes
    for s in (client, upstream):
        # Relayed small writes (TLS handshakes) would otherwise wait out Nagle + delayed ACK (40 ms).
        with contextlib.suppress(OSError):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    broken = threading.Event()
    back = threading.Thread(target=_pump, args=(upstream, client, broken), daemon=True)
    back.start()
    _pump(client, upstream, broken)
    back.join()
    for s in (client, upstream):
        if broken.is_set():
            _reset(s)
        else:
            s.close()


def _pump(src: socket.socket, dst: socket.socket, broken: threading.Event) -> None:
    """Copy ``src`` to ``dst`` until end of stream (then half-close ``dst``), or an error (then
    shut both down, which ends the other direction too)."""
    try:
        while data := src.recv(65536):
            dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
    except OSError:
        broken.set()
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


# --------------------------------------------------------------------------------------------
# Training operator


def _self_signed_certs(cert_dir: Path) -> dict[str, bytes]:
    """A CA and a serving certificate for training-operator.kubeflow.svc (PEM), cached on disk."""
    names = ("ca.crt", "ca.key", "tls.crt", "tls.key")
    if all((cert_dir / n).exists() for n in names):
        return {n: (cert_dir / n).read_bytes() for n in names}
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "training-operator"),
                         x509.NameAttribute(NameOID.COMMON_NAME, "training-operator-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
          .not_valid_after(now + dt.timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    dns = f"training-operator.{OPERATOR_NAMESPACE}.svc"
    key = ec.generate_private_key(ec.SECP256R1())
    # 1 year like the cert-controller rotator; its 90-day lookahead keeps it from rotating ours.
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False)
            .sign(ca_key, hashes.SHA256()))

    def pem_key(k) -> bytes:
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    files = {"ca.crt": ca.public_bytes(serialization.Encoding.PEM), "ca.key": pem_key(ca_key),
             "tls.crt": cert.public_bytes(serialization.Encoding.PEM), "tls.key": pem_key(key)}
    cert_dir.mkdir(parents=True, exist_ok=True)
    for n, data in files.items():
        (cert_dir / n).write_bytes(data)
        (cert_dir / n).chmod(0o600)
    return files


def _operator_status(op_dir: Path) -> dict | None:
    sup = _read_pid(op_dir / "supervisor.pid")
    if sup is None:
        return None
    opid = _read_pid(op_dir / "training-operator.pid")
    if not _process_alive(sup):
        return {"component": "training-operator", "ok": False, "detail": f"supervisor not running (pid {sup})"}
    if not opid or not _process_alive(opid):
        return {"component": "training-operator", "ok": False, "detail": f"not running (pid {opid or '-'})"}
    try:
        port = json.loads((op_dir / "ports.json").read_text())["probe"]
    except (OSError, ValueError, KeyError):
        return {"component": "training-operator", "ok": False, "detail": "ports.json missing"}
    netns = op_dir.parent / "netns"
    if not _netns_mounted(netns):
        return {"component": "training-operator", "ok": False, "detail": f"pid {opid}: the lab's network namespace is missing"}
    ok, said = _probe(f"http://127.0.0.1:{port}/readyz", netns=netns)
    return {"component": "training-operator", "ok": ok, "detail": f"pid {opid}, 127.0.0.1:{port} (lab netns): {said}"}


def start_training_operator(state_dir: Path, kubeconfig: Path, *, binaries: dict[str, Path] | None = None,
                            progress: Progress = print, timeout: float = 120) -> dict:
    """Run the Kubeflow training operator (v1, PyTorchJob and TFJob) out of cluster.

    Applies the PyTorchJob/TFJob CRDs (copied from the Go module at build time), creates namespace
    ``kubeflow`` with Secret ``training-operator-webhook-cert`` holding a self-signed CA and serving
    pair, and starts ``training-operator.v1 --enable-scheme=pytorchjob --enable-scheme=tfjob``.

    It runs inside the lab's network namespace, like the control plane (127.0.0.1:<apiserver port>
    of the kubeconfig is the API server itself there). Two upstream facts shape how it runs
    (training-operator v1.9.4 cmd/training-operator.v1/main.go and pkg/cert/cert.go;
    controller-runtime v0.24.1 pkg/webhook/server.go): the webhook server always listens on all
    interfaces (no flag for its host: in the lab namespace that is only lo), and the cert rotator
    waits for ``/tmp/k8s-webhook-server/serving-certs/tls.crt`` (a hard-coded path) before any
    controller starts. So a small supervisor process gives the operator its own mount namespace,
    where a directory under the state dir holding the certificates is bind-mounted on
    /tmp/k8s-webhook-server (the machine only gets that empty mount point). Needs root
    (CAP_SYS_ADMIN), as the rest of the lab does. Its health endpoint is probed inside the lab
    namespace (:func:`status`). Returns ``{pid, supervisor_pid, probe_port, log}``; harmless when
    already running.
    """
    p = _paths(state_dir)
    op_dir = p["operator"]
    current = _operator_status(op_dir)
    if current and current["ok"]:
        progress("lab cluster | training-operator | already running")
        return _operator_info(op_dir)
    if current:  # a leftover: stop it before starting anew
        stop_training_operator(state_dir, progress=progress)
    if not _netns_mounted(p["netns"]):
        raise LabClusterError(f"lab cluster | training-operator | the cluster is not up (no {p['netns']})")
    binaries = binaries or ensure_binaries(progress=progress)
    kubeconfig = Path(kubeconfig).resolve()
    t0 = time.monotonic()

    crds = training_operator_crds(binaries)
    files = [crds / f"kubeflow.org_{s}s.yaml" for s in OPERATOR_SCHEMES]
    args = [a for f in files for a in ("-f", str(f))]
    kubectl(binaries, kubeconfig, "apply", "--server-side", f"--field-manager={FIELD_MANAGER}", "--force-conflicts",
            *args)
    # Not `kubectl wait`: on a CRD just created it fails on the missing .status.conditions.
    for scheme in OPERATOR_SCHEMES:
        _wait(f"CRD {scheme}s.kubeflow.org to be Established", lambda scheme=scheme: kubectl(
            binaries, kubeconfig, "get", f"crd/{scheme}s.kubeflow.org", "-o",
            'jsonpath={.status.conditions[?(@.type=="Established")].status}', check=False).stdout == "True", 60)

    certs = _self_signed_certs(op_dir / "certs")
    serving = op_dir / "tmp" / "k8s-webhook-server" / "serving-certs"
    serving.mkdir(parents=True, exist_ok=True)
    for n in ("tls.crt", "tls.key"):
        (serving / n).write_bytes(certs[n])
    secret = {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": OPERATOR_SECRET, "namespace": OPERATOR_NAMESPACE},
        "data": {n: base64.b64encode(v).decode() for n, v in certs.items()},
    }
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}}
    kubectl(binaries, kubeconfig, "apply", "--server-side", f"--field-manager={FIELD_MANAGER}", "--force-conflicts",
            "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [namespace, secret]}))

    server = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    api_port = int(server.rsplit(":", 1)[1].rstrip("/"))
    probe_port = _pick_ports(1)[0]
    (op_dir / "ports.json").write_text(json.dumps({"api": api_port, "probe": probe_port}))
    operator_args = [
        str(binaries["training-operator.v1"]),
        f"--kubeconfig={kubeconfig}",
        *[f"--enable-scheme={s}" for s in OPERATOR_SCHEMES],
        "--metrics-bind-address=0",  # 0 disables the metrics endpoint
        f"--health-probe-bind-address=127.0.0.1:{probe_port}",
        "--webhook-server-port=9443",  # all interfaces of the lab's namespace: only its lo
        "--leader-elect=false",
    ]
    spec = {"op_dir": str(op_dir), "argv": operator_args}
    lib_dir = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [lib_dir, os.environ.get("PYTHONPATH")])),
               MY_POD_NAMESPACE=OPERATOR_NAMESPACE)
    for f in ("supervisor.pid", "training-operator.pid"):
        (op_dir / f).unlink(missing_ok=True)
    with (op_dir / "supervisor.log").open("ab") as log:
        sup = netns_popen(state_dir, [sys.executable, "-m", "mlplat.lab.cluster", "supervise-training-operator",
                                      json.dumps(spec)], stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                          start_new_session=True, cwd=op_dir)
    (op_dir / "supervisor.pid").write_text(str(sup.pid))

    def ready() -> bool:
        if sup.poll() is not None:
            tail = (op_dir / "supervisor.log").read_text(errors="replace")[-1500:]
            raise LabClusterError(f"lab cluster | training-operator exited (rc={sup.returncode}):\n{tail}",
                                  permanent=sup.returncode == 3)
        st = _operator_status(op_dir)
        return bool(st and st["ok"])

    try:
        _wait("the training operator to be ready", ready, timeout)
    except LabClusterError:
        stop_training_operator(state_dir, progress=progress)
        raise
    progress(f"lab cluster | training-operator | ready in {time.monotonic() - t0:.1f}s "
             f"(log {op_dir / 'training-operator.log'})")
    return _operator_info(op_dir)


def _operator_info(op_dir: Path) -> dict:
    ports = json.loads((op_dir / "ports.json").read_text())
    return {"pid": _read_pid(op_dir / "training-operator.pid"), "supervisor_pid": _read_pid(op_dir / "supervisor.pid"),
            "probe_port": ports["probe"], "log": str(op_dir / "training-operator.log")}


def stop_training_operator(state_dir: Path, *, progress: Progress = print) -> None:
    """Stop the training operator and its supervisor (by pid file); harmless when not running."""
    op_dir = _paths(state_dir)["operator"]
    sup = _read_pid(op_dir / "supervisor.pid")
    opid = _read_pid(op_dir / "training-operator.pid")
    if sup is None and opid is None:
        return
    if sup:
        _terminate(sup, "supervise-training-operator", timeout=20)
    if opid:
        _terminate(opid, "training-operator.v1")
    left = [str(x) for x in (sup, opid) if x and _process_alive(x)]
    if left:
        raise LabClusterError(f"lab cluster | training-operator processes still running: {', '.join(left)}")
    for f in ("supervisor.pid", "training-operator.pid"):
        (op_dir / f).unlink(missing_ok=True)
    progress("lab cluster | training-operator | stopped")


# --------------------------------------------------------------------------------------------
# The supervisor process (python -m mlplat.lab.cluster supervise-training-operator <json>)


def _supervise_training_operator(spec: dict) -> int:
    """Run the operator in a private mount namespace (started inside the lab's network namespace)."""
    libc = _libc()
    op_dir = Path(spec["op_dir"])
    # Only the rotator's directory is replaced (a bind mount over all of /tmp would hide the
    # kubeconfig or binaries living there); the machine keeps an empty mount point directory.
    private_certs = op_dir / "tmp" / "k8s-webhook-server"
    mount_point = Path("/tmp/k8s-webhook-server")
    try:
        mount_point.mkdir(exist_ok=True)
        _libc_call(libc.unshare, _CLONE_NEWNS)
        _libc_call(libc.mount, b"none", b"/", None, _MS_REC | _MS_PRIVATE, None)
        _libc_call(libc.mount, str(private_certs).encode(), str(mount_point).encode(), None, _MS_BIND, None)
    except OSError as e:
        print(f"training-operator supervisor: cannot create a mount namespace ({e}); the lab needs root", flush=True)
        return 3
    with (op_dir / "training-operator.log").open("ab") as log:
        proc = subprocess.Popen(spec["argv"], stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    (op_dir / "training-operator.pid").write_text(str(proc.pid))
    # Python runs signal handlers in the main thread once it executes bytecode again: wait in
    # short steps, never in one blocking waitpid.
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    while proc.poll() is None and not stop.is_set():
        stop.wait(0.2)
    if stop.is_set():
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return 0
    print(f"training-operator supervisor: operator exited by itself with {proc.returncode}", flush=True)
    return proc.returncode or 1


def main(argv: list[str] | None = None) -> int:
    """Internal entry points: ``supervise-training-operator <json>``, ``forward-apiserver <json>``."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "supervise-training-operator":
        return _supervise_training_operator(json.loads(argv[1]))
    if len(argv) == 2 and argv[0] == "forward-apiserver":
        return _forward_apiserver(json.loads(argv[1]))
    print("usage: python -m mlplat.lab.cluster {supervise-training-operator|forward-apiserver} <json>",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
