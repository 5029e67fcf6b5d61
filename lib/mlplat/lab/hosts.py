"""The lab's SSH hosts: N OpenSSH servers on loopback addresses, each a small "server" of its own.

Each lab host ``lab-<i>`` is an ``sshd -D`` started inside ``unshare --mount --uts --pid --fork
--mount-proc --propagation private``:

- its own hostname (UTS namespace), its own process tree (PID namespace: ``sshd`` is PID 1 there,
  and everything a phase starts on the host dies with it, so ``down`` leaves nothing behind);
- copy-on-write overlays over ``/etc``, ``/var``, ``/usr``, ``/opt`` and ``/root`` (upper and
  work directories: see "Layers" below): writing config files or ``apt-get install``-ing packages
  (``/var/lib/dpkg`` is under ``/var``) changes that host only, never the machine or the other
  hosts. ``/home``, ``/srv`` and ``/mnt`` are the machine's own (create users' homes under an
  overlaid tree, e.g. ``useradd -d /opt/<user>``, when the machine must stay untouched);
- private tmpfs on ``/tmp`` and ``/run``; its own ``/etc/hostname``, ``/etc/machine-id`` and
  ``/etc/hosts`` lines for the lab (written at start: a host started before the lab grew lacks the
  newer hosts' lines); root's ``.bashrc``/``.profile`` start as ``/etc/skel``'s, like a freshly
  installed server, so the machine's shell start-up files do not run on lab hosts. The rest of
  ``/root`` shows through copy-on-write.

Addressing: host *i* listens on ``127.0.10.<i>`` (all of 127.0.0.0/8 reaches the loopback
interface on Linux, so no address is configured), port 22 (2222 when port 22 is taken, e.g. by
the machine's own sshd listening on every address), unless ``up(network=..., port=...)`` say
otherwise (tests and benchmarks run their own lab in a free ``127.0.x`` block beside it).
The hosts share the machine's network namespace; what a host sees of NICs is the machine's.

Keys: one ed25519 client key per lab (``<state_dir>/id_ed25519``), one ed25519 host key per lab
host, both made by ``ssh-keygen``. ``up`` pins the host keys in ``<state_dir>/known_hosts`` and
writes ``<state_dir>/params.yaml``, a valid params file pointing at all of it (absolute paths).

State directory layout::

    <state_dir>/id_ed25519[.pub]  known_hosts  params.yaml  lab-hosts.json  .lock
    <state_dir>/hosts/<name>/ssh/{sshd_config,ssh_host_ed25519_key[.pub],authorized_keys}
                             start.sh  pid  sshd.log
    <layers>/<name>/upper/{etc,var,usr,opt,root}  <layers>/<name>/work/{...}

Layers: ``<layers>`` is ``<state_dir>/hosts`` when the state directory lies outside the overlaid
trees. An overlay's upper directory may not sit inside its lower one, so for a state directory
under ``/root``, ``/opt``... (a checkout in root's home) it is ``/srv/mlplat-lab/<digest>``, or
``$MLPLAT_LAB_LAYERS/<digest>``; the choice is recorded in ``lab-hosts.json``.

The ``ssh/`` folder is bind-mounted read-only at ``/run/mlplat-lab`` inside the host (before the
overlays, so any state directory works). sshd's own pid file is off (``PidFile none``);
``hosts/<name>/pid`` holds the pid of the ``unshare`` process that owns the host's namespaces.

How a host is addressed and which mounts it gets are kept in :func:`_address` and
:func:`_mount_script`. ``up(nodes="real")`` makes the other flavour (:mod:`mlplat.lab.realnodes`):
hosts on 10.213.0.x in network namespaces of their own, with cgroup namespaces, real directories
for container state and :mod:`mlplat.lab.supervisor` as init, able to be Kubernetes nodes.

Needs root (mounts in a private mount namespace, port 22). Debian packages: openssh-server
(sshd, ssh-keygen), util-linux (unshare), a kernel with overlayfs.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from ..params.load import validate_data

DEFAULT_NETWORK = "127.0.10"
DEFAULT_COUNT = 2
DEFAULT_PORT = 22
# Taken when port 22 is busy (typically the machine's own sshd on every address) and no port is given.
FALLBACK_PORT = 2222
OVERLAID = ("etc", "var", "usr", "opt", "root")
STATE_FILE = "lab-hosts.json"
MOUNT_POINT = "/run/mlplat-lab"
LAYERS_FALLBACK = Path("/srv/mlplat-lab")
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/bin/sshd", "/sbin/sshd")
# A marker in every lab process's command line: finds them again (and refuses to signal others).
MARKER = "mlplat-lab-host"

# Popen objects of hosts started by this process, so that stopping one also reaps it.
_CHILDREN: dict[int, subprocess.Popen] = {}


class LabError(RuntimeError):
    """The lab hosts cannot be brought up, stopped or found; the message says why and what to do."""


@dataclass
class LabHost:
    """One lab host as recorded in ``lab-hosts.json``."""

    name: str
    address: str
    port: int
    machine_id: str
    nodes: str = "kwok"  # "real": own network namespace, cgroup root and init (mlplat.lab.realnodes)

    def dir(self, state_dir: Path) -> Path:
        return state_dir / "hosts" / self.name


# -- the seam: addressing and per-host mounts ---------------------------------------------------

def _address(network: str, index: int) -> str:
    """The loopback address of host number `index` (1-based) in `network` (three octets, 127.x.y)."""
    if not 1 <= index <= 254:
        raise LabError(f"a lab has 1 to 254 hosts, not {index}")
    return f"{network}.{index}"


def _default_port(network: str, count: int) -> int:
    """22, unless something already listens there (e.g. the machine's sshd on every address): 2222."""
    busy = any(_listeners(_address(network, i), DEFAULT_PORT) for i in range(1, count + 1))
    return FALLBACK_PORT if busy else DEFAULT_PORT


def _check_network(network: str) -> str:
    parts = network.split(".")
    if len(parts) != 3 or parts[0] != "127" or not all(p.isdigit() and 0 <= int(p) <= 255 for p in parts):
        raise LabError(f"lab network {network!r}: give the first three octets of a loopback /24, e.g. 127.0.10 "
                       f"(the lab stays on 127.0.0.0/8, which reaches only this machine)")
    return network


def free_network(count: int, port: int = DEFAULT_PORT, start: int = 11) -> str:
    """A ``127.0.<x>`` block (x from `start` on, wrapping within 11..254) where nothing listens yet
    on the first `count` addresses at `port`, for a second lab beside the default one (tests,
    benchmarks; vary `start`, e.g. by pid, when several may start at once)."""
    span = range(11, 255)
    first = 11 + (start - 11) % len(span)
    for x in list(range(first, 255)) + list(range(11, first)):
        net = f"127.0.{x}"
        if not any(_listeners(f"{net}.{i}", port, wildcard=False) for i in range(1, count + 1)):
            return net
    raise LabError("no free 127.0.x block on the loopback interface")


def _mount_script(hdir: Path, layers: Path, early: list[str] = ()) -> str:
    """Shell lines, run inside the host's fresh mount namespace, that give it its file systems.
    The order matters: the state and layer paths are resolved before anything covers them
    (`early` lines run at that point too)."""
    lines = [
        "mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /run",
        f"mkdir -p /run/sshd /run/lock {MOUNT_POINT}",
        f"mount --bind {hdir}/ssh {MOUNT_POINT}",
        f"mount -o remount,bind,ro {MOUNT_POINT}",
        *early,
    ]
    for d in OVERLAID:
        lines.append(f"mount -t overlay overlay -o lowerdir=/{d},upperdir={layers}/upper/{d},"
                     f"workdir={layers}/work/{d} /{d}")
    lines.append("mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp")
    return "\n".join(lines)


# -- helpers ------------------------------------------------------------------------------------

def _require_root() -> None:
    if os.geteuid() != 0:
        raise LabError(
            "the lab hosts need root: each one mounts overlays in a private mount namespace "
            "(unshare --mount) and listens on a loopback port. Run as root (e.g. sudo -E mlplat lab up), "
            "or point mlplat at real servers with a params file instead.")


def _sshd() -> str:
    for c in SSHD_CANDIDATES:
        if os.access(c, os.X_OK):
            return c
    found = shutil.which("sshd")
    if found:
        return found
    raise LabError("sshd not found: install the OpenSSH server (Debian/Ubuntu: apt-get install openssh-server; "
                   "RHEL family: dnf install openssh-server)")


def _require_tools() -> None:
    for tool, pkg in (("unshare", "util-linux"), ("ssh-keygen", "openssh-client")):
        if shutil.which(tool) is None:
            raise LabError(f"{tool} not found: install {pkg}")
    _sshd()
    try:
        filesystems = Path("/proc/filesystems").read_text()
    except OSError:
        filesystems = ""
    if "overlay" not in filesystems:
        raise LabError("the kernel lacks overlayfs (not in /proc/filesystems): modprobe overlay")


def _overlaid_top(path: Path) -> str | None:
    """The overlaid tree (/etc, /var...) that `path` lies in, or None."""
    real = path.resolve()
    for d in OVERLAID:
        top = Path("/" + d)
        if real == top or top in real.parents:
            return "/" + d
    return None


def _default_layers(state: Path) -> Path:
    if os.environ.get("MLPLAT_LAB_LAYERS") or _overlaid_top(state):
        base = Path(os.environ.get("MLPLAT_LAB_LAYERS") or LAYERS_FALLBACK).absolute()
        top = _overlaid_top(base)
        if top:
            raise LabError(f"lab layers folder {base} lies under {top}, which every lab host overlays; "
                           f"set MLPLAT_LAB_LAYERS to a folder outside {', '.join('/' + x for x in OVERLAID)}")
        return base / hashlib.sha256(str(state).encode()).hexdigest()[:12]
    return state / "hosts"


def _layers(state: Path) -> Path:
    """Where this lab's hosts keep their overlay upper/work directories (see the module doc)."""
    p = state / STATE_FILE
    if p.is_file():
        recorded = json.loads(p.read_text()).get("layers")
        if recorded:
            return Path(recorded)
    return _default_layers(state)


@contextlib.contextmanager
def _locked(state_dir: Path):
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, stdin=subprocess.DEVNULL, capture_output=True)


def _read_state(state_dir: Path) -> list[LabHost]:
    p = state_dir / STATE_FILE
    if not p.is_file():
        return []
    return [LabHost(**h) for h in json.loads(p.read_text())["hosts"]]


def _write_state(state_dir: Path, hosts: list[LabHost], layers: Path) -> None:
    _atomic_write(state_dir / STATE_FILE,
                  json.dumps({"layers": str(layers), "hosts": [asdict(h) for h in hosts]}, indent=2) + "\n")


def _atomic_write(path: Path, text: str, mode: int = 0o644) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _host(state_dir: Path, name: str) -> LabHost:
    for h in _read_state(state_dir):
        if h.name == name:
            return h
    raise LabError(f"no lab host named {name!r} under {state_dir} (run mlplat lab up first)")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    """Running (a zombie does not count: it holds no namespace, mount or port)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _marker(hdir: Path) -> str:
    return f"{MARKER}:{hdir}"


def _host_pid(state_dir: Path, h: LabHost) -> int | None:
    """The pid of the host's ``unshare`` process when it runs, checked against its command line."""
    hdir = h.dir(state_dir)
    try:
        pid = int((hdir / "pid").read_text().strip())
    except (OSError, ValueError):
        return None
    if _alive(pid) and _marker(hdir) in _cmdline(pid):
        return pid
    return None


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


def _listeners(address: str, port: int, wildcard: bool = True, pid: int | None = None) -> set[int]:
    """Socket inodes listening on address:port, or on that port of every address (IPv4 or IPv6
    wildcard: either can make the bind fail), read from /proc/net/tcp{,6} (of `pid`'s network
    namespace when given): no connection is made, so sshd logs nothing."""
    wanted = {"{:08X}:{:04X}".format(int.from_bytes(bytes(int(x) for x in address.split(".")), "little"), port)}
    if wildcard:
        wanted |= {f"00000000:{port:04X}", f"00000000000000000000000000000000:{port:04X}"}
    out = set()
    base = f"/proc/{pid}/net" if pid else "/proc/net"
    for table in (f"{base}/tcp", f"{base}/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        out |= {int(f[9]) for f in (ln.split() for ln in lines) if len(f) > 9 and f[3] == "0A" and f[1] in wanted}
    return out


def _socket_inodes(pid: int) -> set[int]:
    out = set()
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return out
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(int(target[8:-1]))
    return out


def _host_listening(state_dir: Path, h: LabHost, pid: int | None = None) -> bool:
    """Whether this host's own sshd (not some other process) listens on its address and port."""
    pid = pid if pid is not None else _host_pid(state_dir, h)
    if pid is None:
        return False
    if h.nodes == "real":
        # Its own network namespace: only its own sshd can listen on its address there.
        return any(_listeners(h.address, h.port, wildcard=False, pid=c) for c in _children(pid))
    inodes = _listeners(h.address, h.port)
    return any(inodes & _socket_inodes(c) for c in _children(pid))


# -- per-host files -----------------------------------------------------------------------------

def _sshd_config(h: LabHost) -> str:
    return "\n".join([
        "# Written by mlplat lab up; the lab host's own sshd (see mlplat.lab.hosts).",
        f"ListenAddress {h.address}:{h.port}",
        f"HostKey {MOUNT_POINT}/ssh_host_ed25519_key",
        f"AuthorizedKeysFile {MOUNT_POINT}/authorized_keys",
        "PermitRootLogin prohibit-password",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "UseDNS no",
        "PidFile none",
        "PrintMotd no",
        "AcceptEnv LANG LC_*",
        # Fan-out from Ansible, mlplat and tests opens many sessions at once.
        "MaxStartups 100:30:200",
        "MaxSessions 50",
        "Subsystem sftp /usr/lib/openssh/sftp-server",
        "",
    ])


def _start_script(state_dir: Path, h: LabHost, all_hosts: list[LabHost]) -> str:
    hdir = h.dir(state_dir)
    hosts_lines = "\n".join(f"{x.address} {x.name} # mlplat-lab" for x in all_hosts)
    if h.nodes == "real":
        return _real_start_script(state_dir, h, hosts_lines)
    return f"""set -e
echo {h.name} > /proc/sys/kernel/hostname
{_mount_script(hdir, _layers(state_dir) / h.name)}
# The host shares the machine's kernel: /proc/sys is read-only here and modules cannot be loaded
# (as in a container), so a phase's `sysctl -p` or `modprobe` cannot change the machine itself.
mount --bind /proc/sys /proc/sys
mount -o remount,bind,ro /proc/sys
echo {h.name} > /etc/hostname
echo {h.machine_id} > /etc/machine-id
if [ -f /etc/hosts ]; then sed -i '/# mlplat-lab$/d' /etc/hosts; fi
cat >> /etc/hosts <<'EOF'
{hosts_lines}
EOF
exec setpriv --bounding-set -sys_module {_sshd()} -D -e -f {MOUNT_POINT}/sshd_config
"""


def _real_start_script(state_dir: Path, h: LabHost, hosts_lines: str) -> str:
    """A real-node host (mlplat.lab.realnodes): already in its network namespace and cgroup; its
    init is mlplat.lab.supervisor, with systemctl/journalctl shims on its PATH."""
    from . import realnodes
    from .build import cache_root

    hdir = h.dir(state_dir)
    gateway = h.address.rsplit(".", 1)[0] + f".{realnodes.GATEWAY_ADDRESS}"
    py = os.path.realpath(sys.executable)
    # The lab's build cache (image archives, binaries) and state folder (the image kit and binaries
    # the params point at) as the machine has them: neither hidden by the host's /tmp nor seen
    # through its overlays.
    early, late = realnodes.mount_lines(hdir / "data", [cache_root().absolute(), state_dir.absolute()])
    real = "\n".join(late)
    shim = "\n".join(f"printf '#!/bin/sh\\nexec {py} -S {MOUNT_POINT}/supervisor.py {n} \"$@\"\\n' > /usr/local/sbin/{n}\n"
                     f"chmod 755 /usr/local/sbin/{n}" for n in ("systemctl", "journalctl"))
    return f"""set -e
echo {h.name} > /proc/sys/kernel/hostname
# The machine's named network namespaces (other lab hosts') must not be pinned by this host's copy
# of the mount table.
for m in $(awk '$5 ~ "^/run/netns/" {{print $5}}' /proc/self/mountinfo); do umount -l "$m" || true; done
umount -l /run/netns 2>/dev/null || true
{_mount_script(hdir, _layers(state_dir) / h.name, early)}
{real}
echo {h.name} > /etc/hostname
echo {h.machine_id} > /etc/machine-id
rm -f /etc/resolv.conf
# No resolver is reachable from the lab: an inert lab address (not loopback, which CoreDNS's loop
# plugin would refuse), so cluster DNS works and outside names time out.
echo "nameserver {gateway}" > /etc/resolv.conf
if [ -f /etc/hosts ]; then sed -i '/# mlplat-lab$/d' /etc/hosts; fi
cat >> /etc/hosts <<'EOF'
{hosts_lines}
EOF
mkdir -p /usr/local/sbin
{shim}
exec setpriv --bounding-set -sys_module {py} {MOUNT_POINT}/supervisor.py init {_marker(hdir)} -- \\
  {_sshd()} -D -e -f {MOUNT_POINT}/sshd_config
"""


def _prepare_host(state_dir: Path, h: LabHost, client_pub: str) -> None:
    hdir = h.dir(state_dir)
    ssh = hdir / "ssh"
    ssh.mkdir(parents=True, exist_ok=True)
    os.chmod(ssh, 0o755)
    layers = _layers(state_dir) / h.name
    for d in OVERLAID:
        upper = layers / "upper" / d
        (layers / "work" / d).mkdir(parents=True, exist_ok=True)
        if upper.exists():
            continue
        upper.mkdir(parents=True)
        # The overlay's root takes the upper directory's owner and mode: match the real one (/root is 0700).
        st = os.stat("/" + d)
        os.chown(upper, st.st_uid, st.st_gid)
        os.chmod(upper, st.st_mode & 0o7777)
        if d == "root":
            for dot in (".bashrc", ".profile"):
                src = Path("/etc/skel") / dot
                if src.is_file():
                    shutil.copy2(src, upper / dot)
    key = ssh / "ssh_host_ed25519_key"
    if not key.exists():
        _keygen(key, f"root@{h.name}")
    _atomic_write(ssh / "sshd_config", _sshd_config(h))
    _atomic_write(ssh / "authorized_keys", client_pub)
    if h.nodes == "real":
        shutil.copy2(Path(__file__).with_name("supervisor.py"), ssh / "supervisor.py")
        (hdir / "data").mkdir(exist_ok=True)


def _start(state_dir: Path, h: LabHost, all_hosts: list[LabHost]) -> subprocess.Popen:
    hdir = h.dir(state_dir)
    if h.nodes != "real" and _listeners(h.address, h.port):
        raise LabError(f"{h.name}: something else already listens on {h.address}:{h.port} (or on port {h.port} "
                       f"of every address, e.g. the machine's own sshd): stop it, or use another port "
                       f"(the lab's port: mlplat.lab.hosts.up(..., port=2222))")
    script = hdir / "start.sh"
    _atomic_write(script, _start_script(state_dir, h, all_hosts))
    log = open(hdir / "sshd.log", "ab")
    argv = ["unshare", "--mount", "--uts", "--pid", "--fork", "--kill-child", "--mount-proc",
            "--propagation", "private", "sh", str(script), _marker(hdir)]
    if h.nodes == "real":
        from . import realnodes

        lid = realnodes.lab_id(state_dir)
        cgroups = realnodes.cgroup_up(lid, h.name)
        enter = "".join(f"echo $$ > {d}/cgroup.procs; " for d in cgroups)
        argv = ["sh", "-c", enter + 'exec nsenter --net=/run/netns/"$0" "$@"', realnodes.host_ns(lid, h.name),
                *argv[:1], "--cgroup", *argv[1:]]
    try:
        proc = subprocess.Popen(argv,
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, close_fds=True,
            # Its own session: a Ctrl-C in the terminal or notebook that ran `up` does not stop the lab.
            start_new_session=True)
    finally:
        log.close()
    _CHILDREN[proc.pid] = proc
    _atomic_write(hdir / "pid", f"{proc.pid}\n")
    return proc


def _wait_listening(state_dir: Path, started: list[tuple[LabHost, subprocess.Popen]]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    pending = list(started)
    problems = []
    while pending and time.monotonic() < deadline:
        still = []
        for h, proc in pending:
            if _host_listening(state_dir, h, proc.pid):
                continue
            if proc.poll() is not None:
                problems.append(f"{h.name}: sshd exited ({proc.returncode}); {_log_tail(state_dir, h)}")
                continue
            still.append((h, proc))
        pending = still
        if pending:
            time.sleep(0.05)
    for h, proc in pending:
        problems.append(f"{h.name}: not listening on {h.address}:{h.port} after {START_TIMEOUT:g}s; "
                        f"{_log_tail(state_dir, h)}")
        _stop(state_dir, h)
    if problems:
        raise LabError("lab hosts failed to start:\n  " + "\n  ".join(problems))


def _log_tail(state_dir: Path, h: LabHost, lines: int = 5) -> str:
    try:
        text = (h.dir(state_dir) / "sshd.log").read_text(errors="replace")
    except OSError:
        return "no log"
    return "log: " + " | ".join(text.strip().splitlines()[-lines:])


def _stop(state_dir: Path, h: LabHost) -> None:
    pid = _host_pid(state_dir, h)
    if pid is not None:
        # unshare --fork blocks SIGTERM while it waits; the namespace's init (sshd) takes it, and
        # when it exits the kernel kills everything else in the host's PID namespace.
        for child in _children(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)
        if not _wait_gone(pid, STOP_TIMEOUT):
            # --kill-child: SIGKILL to unshare sends SIGKILL to the namespace's init.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if not _wait_gone(pid, STOP_TIMEOUT):
                raise LabError(f"{h.name}: process {pid} did not stop")
    with contextlib.suppress(FileNotFoundError):
        (h.dir(state_dir) / "pid").unlink()


def _wait_gone(pid: int, timeout: float) -> bool:
    proc = _CHILDREN.get(pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None:
            if proc.poll() is not None:
                _CHILDREN.pop(pid, None)
                return True
        elif not _alive(pid):
            return True
        time.sleep(0.02)
    return False


# -- known_hosts and params ---------------------------------------------------------------------

def _write_known_hosts(state_dir: Path, hosts: list[LabHost]) -> Path:
    from ..hosts.ssh import known_hosts_name

    lines = ["# Pinned host keys of the mlplat lab, written by mlplat lab up."]
    for h in hosts:
        key_type, key = (h.dir(state_dir) / "ssh" / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        lines.append(f"{known_hosts_name(h.address, h.port)} {key_type} {key}")
    path = state_dir / "known_hosts"
    _atomic_write(path, "\n".join(lines) + "\n")
    return path


def _machine_os() -> dict:
    """The params `os:` section describing this machine (and so every lab host)."""
    from ..hosts.facts import parse_os_release

    osr = parse_os_release(Path("/etc/os-release").read_text())
    distro = osr.get("ID", "debian")
    version = osr.get("VERSION_ID", "")
    return {"family": osr["family"], "distro": distro,
            "version": version if distro == "ubuntu" else version.split(".")[0]}


def _write_params(state_dir: Path, hosts: list[LabHost], port: int) -> Path:
    path = state_dir / "params.yaml"
    data: dict = {}
    if path.is_file():
        data = yaml.safe_load(path.read_text()) or {}
    data["site"] = data.get("site") or "lab"
    old_hosts = {h.get("name"): h for h in data.get("hosts") or [] if isinstance(h, dict)}
    new_hosts = []
    for i, h in enumerate(hosts):
        entry = dict(old_hosts.get(h.name) or {})
        entry.update(name=h.name, address=h.address,
                     roles=["control-plane", "worker"] if i == 0 else ["worker"])
        entry.setdefault("gpus", 0)
        new_hosts.append(entry)
    data["hosts"] = new_hosts
    ssh = dict(data.get("ssh") or {})
    ssh.update(user="root", port=port, key_file=str(state_dir / "id_ed25519"),
               known_hosts=str(state_dir / "known_hosts"), connect_timeout=5)
    data["ssh"] = ssh
    lab = dict(data.get("lab") or {})
    lab["state_dir"] = str(state_dir)
    lab["nodes"] = hosts[0].nodes if hosts else "kwok"
    data["lab"] = lab
    # Lab hosts run the machine's own OS (their /usr is an overlay of it), and reach no package
    # repository but the distribution's, so containerd comes from there.
    data.setdefault("os", _machine_os())
    data.setdefault("gpu_runtime", {"containerd_source": "distro"})
    # The offline kit holds the remote bases of the training profile, not all of the default set's
    # (two argo-workflows bases are missing), and phase 60 needs the v1 training operator, which
    # 26.03's default set leaves out.
    data.setdefault("kubeflow", {"components": "training-only"})
    # Phase 60's thresholds sized for a CPU run of two processes on the machine's shared cores (the
    # defaults are for GPU servers); the verdict says the lab's numbers prove the pipeline only.
    data.setdefault("validation", {"min_busbw_gbps": 0.005, "min_scaling_efficiency": 0.1})
    _, problems = validate_data(data, str(path))
    if problems:
        raise LabError(f"the lab params file {path} would be invalid:\n  " + "\n  ".join(map(str, problems)))
    header = ("# The lab's params, written by `mlplat lab up` (mlplat.lab.hosts). On each `up` the\n"
              "# site, hosts, ssh and lab sections are rewritten; every other key is kept.\n")
    _atomic_write(path, header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False))
    return path


# -- public API ---------------------------------------------------------------------------------

def up(state_dir: str | os.PathLike, count: int | None = None, *, port: int | None = None,
       network: str | None = None, nodes: str | None = None) -> Path:
    """Bring the lab's SSH hosts up and return the path of the lab params file.

    `count`: how many hosts (default: as many as the lab has, or 2 for a new lab); hosts beyond
    it are stopped and left out of the params (their folders stay, so growing again resumes
    them). Running hosts are kept, missing ones started: calling ``up`` twice is harmless.
    `port`: the SSH port of every host (default 22, or the lab's current one). `network`: the
    first three octets of the hosts' loopback addresses (default 127.0.10, or the lab's current
    one); a second lab on the same machine needs its own (see :func:`free_network`).
    `nodes`: ``kwok`` (default; sshd on loopback) or ``real`` (hosts that can be Kubernetes nodes:
    own network namespaces on a lab bridge in `network` (default 10.213.0), cgroup roots, init;
    see :mod:`mlplat.lab.realnodes`). A lab keeps its flavour until ``down --purge``.
    """
    _require_root()
    _require_tools()
    state = Path(state_dir).absolute()
    with _locked(state):
        existing = _read_state(state)
        layers = _layers(state)
        if count is None:
            count = len(existing) or DEFAULT_COUNT
        if count < 1:
            raise LabError(f"a lab needs at least one host, not {count}")
        flavour = existing[0].nodes if existing else (nodes or "kwok")
        if nodes and nodes != flavour:
            raise LabError(f"the lab under {state} has {flavour} nodes; `mlplat lab down --purge` it first to make "
                           f"one with {nodes} nodes (or use another state directory)")
        if flavour not in ("kwok", "real"):
            raise LabError(f"lab nodes {flavour!r}: kwok or real")
        real = flavour == "real"
        if real:
            from . import realnodes
        if network is None:
            network = existing[0].address.rsplit(".", 1)[0] if existing else (
                realnodes.DEFAULT_NETWORK if real else DEFAULT_NETWORK)
        if real:
            try:
                realnodes.check_network(network)
            except realnodes.RealNodesError as e:
                raise LabError(str(e)) from e
            port = DEFAULT_PORT
        else:
            _check_network(network)
        if port is None:
            port = existing[0].port if existing else _default_port(network, count)
        by_name = {h.name: h for h in existing}
        hosts = []
        for i in range(1, count + 1):
            name = f"lab-{i}"
            old = by_name.get(name)
            hosts.append(LabHost(name=name, address=realnodes.address(network, i) if real else _address(network, i),
                                 port=port, machine_id=old.machine_id if old else uuid.uuid4().hex,
                                 nodes=flavour))
        wanted = {h.name: h for h in hosts}
        for old in existing:
            new = wanted.get(old.name)
            if new is None or (new.address, new.port) != (old.address, old.port):
                _stop(state, old)
        key = state / "id_ed25519"
        if not key.exists():
            _keygen(key, "mlplat-lab")
        client_pub = (state / "id_ed25519.pub").read_text()
        _write_state(state, hosts, layers)
        if real:
            realnodes.record_sysctls(state)
            try:
                realnodes.net_up(network, realnodes.lab_id(state), [(i, h.name) for i, h in enumerate(hosts, 1)])
            except realnodes.RealNodesError as e:
                raise LabError(f"lab network: {e}") from e
        started = []
        for h in hosts:
            _prepare_host(state, h, client_pub)
            if _host_pid(state, h) is None:
                started.append((h, _start(state, h, hosts)))
        _wait_listening(state, started)
        _write_known_hosts(state, hosts)
        return _write_params(state, hosts, port)


def down(state_dir: str | os.PathLike, *, purge: bool = False) -> None:
    """Stop every lab host and check that no lab process and no lab mount remains.

    The hosts' folders stay (keys, installed packages: a powered-off server), unless `purge`,
    which deletes the state directory after the check.
    """
    state = Path(state_dir).absolute()
    if not state.exists():
        return
    _require_root()
    with _locked(state):
        recorded = _read_state(state)
        names = {h.name for h in recorded}
        # Hosts dropped from the state file by a smaller `up` may still have a pid file.
        for d in sorted((state / "hosts").glob("*")) if (state / "hosts").is_dir() else []:
            if d.name not in names and (d / "pid").exists():
                recorded.append(LabHost(d.name, "", 0, ""))
        for h in recorded:
            _stop(state, h)
        left = lab_processes(state)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if left and any(not _wait_gone(p, STOP_TIMEOUT) for p in left):
            raise LabError(f"lab processes still running after down: {left}")
        mounts = lab_mounts(state)
        if mounts:
            raise LabError("lab mounts still present after down:\n  " + "\n  ".join(mounts[:10]))
        if any(h.nodes == "real" for h in recorded):
            _real_down(state, recorded)
    if purge:
        layers = _layers(state)
        shutil.rmtree(state)
        if layers.exists():
            shutil.rmtree(layers)
            with contextlib.suppress(OSError):
                layers.parent.rmdir()  # only when empty: other labs' layers may live beside it


def _real_down(state: Path, hosts: list[LabHost]) -> None:
    """What a real-node lab leaves besides processes and mounts: its network namespaces and veth,
    cgroup directories, the CNI's IP reservations of containers that no longer exist, and the
    machine-wide sysctls the kubelet changed."""
    from . import realnodes

    lid = realnodes.lab_id(state)
    deadline = time.monotonic() + STOP_TIMEOUT
    left = realnodes.cgroup_down(lid)
    while left and time.monotonic() < deadline:  # the namespaces' last processes may still be exiting
        time.sleep(0.2)
        left = realnodes.cgroup_down(lid)
    realnodes.net_down(lid)
    layers = _layers(state)
    for h in hosts:
        shutil.rmtree(layers / h.name / "upper" / "var" / "lib" / "cni", ignore_errors=True)
    realnodes.restore_sysctls(state)
    rest = {k: v for k, v in realnodes.leftovers(state).items() if v}
    if left or rest:
        raise LabError("real-node lab leftovers after down: " + "; ".join(left + [f"{k}: {v}" for k, v in rest.items()]))


def status(state_dir: str | os.PathLike) -> list[dict]:
    """One dict per lab host: name, address, port, pid (None when stopped), running, listening, ok."""
    state = Path(state_dir).absolute()
    out = []
    for h in _read_state(state):
        pid = _host_pid(state, h)
        listening = pid is not None and _host_listening(state, h, pid)
        out.append({"name": h.name, "address": h.address, "port": h.port, "pid": pid,
                    "running": pid is not None, "listening": listening, "ok": pid is not None and listening})
    return out


def params_path(state_dir: str | os.PathLike) -> Path:
    """Where ``up`` writes the lab params file."""
    return Path(state_dir).absolute() / "params.yaml"


def stop_host(state_dir: str | os.PathLike, name: str) -> None:
    """Stop one lab host (a powered-off server: its address stops answering, its files stay)."""
    state = Path(state_dir).absolute()
    _stop(state, _host(state, name))


def start_host(state_dir: str | os.PathLike, name: str) -> None:
    """Start one stopped lab host again (no-op when it runs)."""
    _require_root()
    state = Path(state_dir).absolute()
    h = _host(state, name)
    if _host_pid(state, h) is None:
        _wait_listening(state, [(h, _start(state, h, _read_state(state)))])


def pause_host(state_dir: str | os.PathLike, name: str, paused: bool = True) -> None:
    """Freeze (SIGSTOP) or thaw (SIGCONT) a lab host's sshd: a hung server that still accepts TCP
    connections (the kernel completes the handshake) but never answers."""
    state = Path(state_dir).absolute()
    h = _host(state, name)
    pid = _host_pid(state, h)
    if pid is None:
        raise LabError(f"{name} is not running")
    for child in _children(pid):
        os.kill(child, signal.SIGSTOP if paused else signal.SIGCONT)


def regenerate_host_key(state_dir: str | os.PathLike, name: str) -> str:
    """Give a lab host a new host key (restarting it when it runs), as a reinstall would, without
    touching known_hosts: connections are then refused until the key is pinned again (``up``
    re-pins the lab's keys). Returns the new key's fingerprint."""
    _require_root()
    state = Path(state_dir).absolute()
    h = _host(state, name)
    running = _host_pid(state, h) is not None
    if running:
        _stop(state, h)
    key = h.dir(state) / "ssh" / "ssh_host_ed25519_key"
    for p in (key, key.with_name(key.name + ".pub")):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    _keygen(key, f"root@{name}")
    if running:
        start_host(state, name)
    out = subprocess.run(["ssh-keygen", "-l", "-f", str(key) + ".pub"], capture_output=True, text=True, check=True)
    return out.stdout.split()[1]


def _scan(state_dir: str | os.PathLike) -> tuple[list[int], list[str]]:
    """Processes of this lab (the marker in the command line, or a mount namespace holding the lab's
    mounts) and the mount lines, in any namespace, that refer to the lab's state or layers folder."""
    state = str(Path(state_dir).absolute()) + "/"
    needles = (state, str(_layers(Path(state_dir).absolute())) + "/")
    mark = f"{MARKER}:{state}"
    pids: list[int] = []
    lines: set[str] = set()
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        pid = int(p.name)
        try:
            mine = [ln for ln in (p / "mountinfo").read_text().splitlines() if any(n in ln for n in needles)]
        except OSError:
            continue  # gone meanwhile, or a kernel thread
        if (mine or mark in _cmdline(pid)) and _alive(pid):
            pids.append(pid)
            lines.update(mine)
    return sorted(pids), sorted(lines)


def cpu_seconds(state_dir: str | os.PathLike) -> dict[str, float]:
    """CPU time (user + system, seconds) each running lab host has used so far in processes that
    have finished (sshd's listener plus the connections and commands it has reaped): the servers'
    share of a benchmark, read before and after it."""
    state = Path(state_dir).absolute()
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for h in _read_state(state):
        pid = _host_pid(state, h)
        for init in _children(pid) if pid else []:
            try:
                f = Path(f"/proc/{init}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[h.name] = sum(int(x) for x in f[11:15]) / tick  # utime, stime, cutime, cstime
    return out


def lab_processes(state_dir: str | os.PathLike) -> list[int]:
    """Pids of running processes that belong to this lab's hosts (none after :func:`down`)."""
    return _scan(state_dir)[0]


def lab_mounts(state_dir: str | os.PathLike) -> list[str]:
    """Mount table lines, in any process's mount namespace, that refer to this lab's state or
    layers folder (none after :func:`down`)."""
    return _scan(state_dir)[1]
