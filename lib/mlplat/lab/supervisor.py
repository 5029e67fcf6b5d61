#!/usr/bin/env python3
"""A real-node lab host's init: a small service supervisor with ``systemctl`` and ``journalctl`` shims.

The lab's machine has no systemd, yet the runbook (``systemctl enable --now containerd``) and kubeadm
(which restarts the kubelet with ``systemctl`` at exactly the right moments) expect one. Each
real-node lab host therefore runs this file as PID 1 of its PID namespace (``init`` mode), and gets
it on its PATH as ``systemctl`` and ``journalctl``. It reads the same unit files systemd would
(``/etc/systemd/system``, ``/usr/lib/systemd/system``, ``/lib/systemd/system`` and their ``.d``
drop-ins: ``ExecStart``, ``ExecStartPre``, ``Environment``, ``EnvironmentFile``, ``Restart``,
``RestartSec``), so the kubelet runs with the command line kubeadm's drop-in defines
(``10-kubeadm.conf``: ``kubeadm-flags.env``, ``/var/lib/kubelet/config.yaml``).

This is a stand-in, not systemd: it starts, stops and restarts main processes (by the pid it
started; nothing is ever killed by name), restarts them when they exit as ``Restart=`` says,
starts enabled units at boot, and logs each unit's output to ``/var/log/mlplat-units/<unit>.log``.
Cgroups per unit, socket activation, dependencies and timers are not modelled. It creates
``/run/systemd/system`` so that tools asking "was this booted with systemd?" get the systemctl
path; the lab's facts say the init is ``mlplat-init``.

Standalone on purpose (no mlplat import): it runs inside the lab hosts, under any Python 3.
The shims talk to the init through files in ``/run/mlplat-init``: ``<unit>.want`` (start|stop),
``<unit>.restart`` (a request counter) and ``<unit>.json`` (the init's view: pid, state, restarts).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time

STATE = "/run/mlplat-init"
LOGS = "/var/log/mlplat-units"
UNIT_DIRS = ("/etc/systemd/system", "/run/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system")
WANTS = "/etc/systemd/system/multi-user.target.wants"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STOP_GRACE = 4.0


# -- unit files ----------------------------------------------------------------------------------

def _unit_name(name: str) -> str:
    return name if "." in name else name + ".service"


def unit_files(unit: str) -> list[str]:
    """The unit file and its drop-ins, in the order systemd applies them."""
    unit = _unit_name(unit)
    main = next((os.path.join(d, unit) for d in UNIT_DIRS if os.path.isfile(os.path.join(d, unit))), None)
    if main is None:
        return []
    dropins: dict[str, str] = {}
    for d in reversed(UNIT_DIRS):  # earlier directories override later ones of the same name
        dd = os.path.join(d, unit + ".d")
        if os.path.isdir(dd):
            for f in os.listdir(dd):
                if f.endswith(".conf"):
                    dropins[f] = os.path.join(dd, f)
    return [main] + [dropins[k] for k in sorted(dropins)]


def parse_unit(unit: str) -> dict | None:
    """The [Service] settings that matter here, with systemd's list semantics (an empty
    ``ExecStart=`` resets the list)."""
    files = unit_files(unit)
    if not files:
        return None
    svc: dict = {"ExecStart": [], "ExecStartPre": [], "Environment": [], "EnvironmentFile": [],
                 "Restart": "no", "RestartSec": "0.1", "files": files}
    for path in files:
        section = None
        lines = open(path, encoding="utf-8", errors="replace").read().replace("\\\n", " ").splitlines()
        for raw in lines:
            line = raw.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                section = line.strip("[]")
                continue
            if section != "Service" or "=" not in line:
                continue
            key, value = (x.strip() for x in line.split("=", 1))
            if key in ("ExecStart", "ExecStartPre", "Environment", "EnvironmentFile"):
                if value == "":
                    svc[key] = []
                else:
                    svc[key].append(value)
            elif key in ("Restart", "RestartSec"):
                svc[key] = value
    return svc


def _env_file(path: str) -> dict:
    out = {}
    optional = path.startswith("-")
    path = path.lstrip("-")
    try:
        text = open(path, encoding="utf-8").read()
    except OSError:
        if optional:
            return out
        raise
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        k, v = line.split("=", 1)
        v = v.strip()
        if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'":
            v = v[1:-1]
        out[k.strip()] = v
    return out


def environment(svc: dict) -> dict:
    env = {"PATH": PATH, "LANG": "C.UTF-8", "HOME": "/root"}
    for value in svc["Environment"]:
        for item in shlex.split(value):
            if "=" in item:
                k, v = item.split("=", 1)
                env[k] = v
    for path in svc["EnvironmentFile"]:
        env.update(_env_file(path))
    return env


def expand(cmd: str, env: dict) -> list[str]:
    """systemd's ExecStart expansion: ``$VAR`` splits into words, ``${VAR}`` stays one word; a
    leading ``-`` (ignore failure) or ``@``/``+``/``!`` prefix is dropped."""
    cmd = cmd.lstrip("-@+!:")
    out: list[str] = []
    for word in shlex.split(cmd):
        if word.startswith("$") and not word.startswith("${") and word[1:].replace("_", "").isalnum():
            out.extend(env.get(word[1:], "").split())
            continue
        for k, v in env.items():
            word = word.replace("${" + k + "}", v)
        out.append(word)
    return out


def _seconds(value: str) -> float:
    v = value.strip()
    for suffix, mult in (("ms", 0.001), ("min", 60.0), ("s", 1.0)):
        if v.endswith(suffix):
            return float(v[: -len(suffix)]) * mult
    return float(v)


# -- the init ------------------------------------------------------------------------------------

class Init:
    def __init__(self, sshd: list[str]):
        self.sshd_cmd = sshd
        self.sshd: subprocess.Popen | None = None
        self.procs: dict[str, subprocess.Popen] = {}
        self.info: dict[str, dict] = {}
        self.handled_restart: dict[str, int] = {}
        self.stopping = False

    # state files
    def _path(self, unit: str, ext: str) -> str:
        return os.path.join(STATE, f"{_unit_name(unit)}.{ext}")

    def want(self, unit: str) -> str:
        try:
            return open(self._path(unit, "want")).read().strip()
        except OSError:
            return "stop"

    def _publish(self, unit: str) -> None:
        tmp = self._path(unit, "json.tmp")
        with open(tmp, "w") as fh:
            json.dump(self.info[unit], fh)
        os.replace(tmp, self._path(unit, "json"))

    def boot(self) -> None:
        os.makedirs(STATE, exist_ok=True)
        os.makedirs(LOGS, exist_ok=True)
        os.makedirs("/run/systemd/system", exist_ok=True)
        if os.path.isdir(WANTS):
            for f in sorted(os.listdir(WANTS)):
                with open(self._path(f, "want"), "w") as fh:
                    fh.write("start\n")

    def _log(self, unit: str, text: str) -> None:
        with open(os.path.join(LOGS, unit + ".log"), "a") as fh:
            fh.write(time.strftime("%Y-%m-%dT%H:%M:%S ") + f"mlplat-init: {text}\n")

    def start(self, unit: str) -> None:
        info = self.info.setdefault(unit, {"unit": unit, "pid": None, "state": "inactive", "restarts": 0,
                                           "exit": None, "since": time.time()})
        svc = parse_unit(unit)
        if svc is None or not svc["ExecStart"]:
            info.update(state="failed", pid=None, error="unit not found" if svc is None else "no ExecStart")
            self._publish(unit)
            return
        try:
            env = environment(svc)
        except OSError as e:
            info.update(state="failed", pid=None, error=f"EnvironmentFile: {e}")
            self._publish(unit)
            return
        log = open(os.path.join(LOGS, unit + ".log"), "ab")
        try:
            for pre in svc["ExecStartPre"]:
                rc = subprocess.call(expand(pre, env), env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
                if rc != 0 and not pre.startswith("-"):
                    info.update(state="failed", pid=None, error=f"ExecStartPre exited {rc}", since=time.time())
                    self._publish(unit)
                    return
            argv = expand(svc["ExecStart"][-1], env)
            self._log(unit, "starting: " + " ".join(argv))
            log.flush()
            proc = subprocess.Popen(argv, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                    close_fds=True, start_new_session=True)
        except OSError as e:
            info.update(state="failed", pid=None, error=str(e), since=time.time())
            self._publish(unit)
            return
        finally:
            log.close()
        self.procs[unit] = proc
        info.update(state="active", pid=proc.pid, exit=None, since=time.time(), error=None,
                    restart_sec=_seconds(svc["Restart"] != "no" and svc["RestartSec"] or "0.1"),
                    restart=svc["Restart"])
        self._publish(unit)

    def stop(self, unit: str, state: str = "inactive") -> None:
        proc = self.procs.pop(unit, None)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            self._log(unit, f"stopped (pid {proc.pid})")
        info = self.info.setdefault(unit, {"unit": unit, "restarts": 0})
        info.update(state=state, pid=None, since=time.time())
        self._publish(unit)

    def reap(self) -> None:
        """Collect every exited child (orphans are re-parented to PID 1 and must be reaped too)."""
        for unit, proc in list(self.procs.items()):
            rc = proc.poll()
            if rc is not None:
                del self.procs[unit]
                info = self.info[unit]
                info.update(state="failed" if rc else "inactive", pid=None, exit=rc, since=time.time())
                self._log(unit, f"exited with status {rc}")
                self._publish(unit)
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return

    def tick(self) -> None:
        self.reap()
        if self.sshd is not None and self.sshd.poll() is not None and not self.stopping:
            self.sshd = subprocess.Popen(self.sshd_cmd, close_fds=True)
        names = {f[:-5] for f in os.listdir(STATE) if f.endswith(".want")}
        for unit in sorted(names | set(self.procs)):
            want = self.want(unit)
            running = unit in self.procs
            try:
                requested = int(open(self._path(unit, "restart")).read().strip() or 0)
            except (OSError, ValueError):
                requested = 0
            if requested != self.handled_restart.get(unit, 0):
                self.handled_restart[unit] = requested
                if running:
                    self.stop(unit)
                    running = False
                if want == "start":
                    self.start(unit)
                    running = True
            if want == "start" and not running:
                info = self.info.get(unit)
                if info is None:
                    self.start(unit)
                elif info.get("restart") == "always" or (info.get("restart") == "on-failure" and info.get("exit")):
                    if time.time() - info.get("since", 0) >= info.get("restart_sec", 0.1):
                        info["restarts"] = info.get("restarts", 0) + 1
                        self.start(unit)
            elif want != "start" and running:
                self.stop(unit)

    def shutdown(self, *_):
        self.stopping = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.shutdown)
        signal.signal(signal.SIGINT, self.shutdown)
        self.boot()
        self.sshd = subprocess.Popen(self.sshd_cmd, close_fds=True)
        while not self.stopping:
            self.tick()
            time.sleep(0.2)
        # Stop in reverse start order: the kubelet before containerd, sshd last.
        for unit in reversed(list(self.procs)):
            self.stop(unit)
        if self.sshd is not None and self.sshd.poll() is None:
            self.sshd.terminate()
            try:
                self.sshd.wait(5)
            except subprocess.TimeoutExpired:
                self.sshd.kill()
        return 0


# -- the shims -------------------------------------------------------------------------------------

def _read_info(unit: str) -> dict:
    try:
        return json.load(open(os.path.join(STATE, _unit_name(unit) + ".json")))
    except (OSError, ValueError):
        return {}


def _alive(pid) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
        return True
    except OSError:
        return False


def _active(unit: str) -> bool:
    info = _read_info(unit)
    return info.get("state") == "active" and _alive(info.get("pid"))


def _write(unit: str, ext: str, text: str) -> None:
    path = os.path.join(STATE, _unit_name(unit) + "." + ext)
    with open(path + ".tmp", "w") as fh:
        fh.write(text)
    os.replace(path + ".tmp", path)


def _wait(pred, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return pred()


def _request_restart(unit: str) -> None:
    try:
        n = int(open(os.path.join(STATE, unit + ".restart")).read().strip() or 0)
    except (OSError, ValueError):
        n = 0
    _write(unit, "restart", f"{n + 1}\n")


def _enabled(unit: str) -> bool:
    return os.path.lexists(os.path.join(WANTS, _unit_name(unit)))


def systemctl(argv: list[str]) -> int:
    args = [a for a in argv if not a.startswith("-")]
    flags = {a for a in argv if a.startswith("-")}
    if not args:
        print("mlplat lab systemctl: give a command (start, stop, restart, enable, is-active, status...)")
        return 1
    cmd, units = args[0], [_unit_name(u) for u in args[1:]]
    if not os.path.isdir(STATE):
        print("System has not been booted with systemd as init system (PID 1). Can't operate.", file=sys.stderr)
        return 1
    if cmd in ("daemon-reload", "daemon-reexec", "reset-failed"):
        return 0
    rc = 0
    for unit in units:
        known = parse_unit(unit) is not None
        if cmd in ("start", "restart", "try-restart", "reload-or-restart", "reload", "enable") and not known:
            print(f"Failed to {cmd} {unit}: Unit {unit} not found.", file=sys.stderr)
            rc = 5
            continue
        if cmd in ("enable", "disable"):
            link = os.path.join(WANTS, unit)
            if cmd == "enable" and not _enabled(unit):
                os.makedirs(WANTS, exist_ok=True)
                target = (parse_unit(unit) or {"files": [unit]})["files"][0]
                os.symlink(target, link)
                print(f"Created symlink {link} \u2192 {target}.")
            elif cmd == "disable" and _enabled(unit):
                os.unlink(link)
                print(f"Removed \"{link}\".")
            if "--now" in flags:
                rc = max(rc, systemctl(["start" if cmd == "enable" else "stop", unit]))
        elif cmd in ("start", "restart", "try-restart", "reload-or-restart", "reload"):
            if cmd == "try-restart" and not _active(unit):
                continue
            if cmd == "start" and _active(unit):
                _write(unit, "want", "start\n")
                continue
            t0 = time.time()
            _request_restart(unit)
            _write(unit, "want", "start\n")
            # Like systemd with Type=simple: done once the process is started (it may exit later).
            acted = _wait(lambda: _read_info(unit).get("since", 0) >= t0)
            if not acted or _read_info(unit).get("error"):
                print(f"Job for {unit} failed because the control process exited with error code. "
                      f"See \"journalctl -u {unit}\" for details.", file=sys.stderr)
                rc = 1
        elif cmd == "stop":
            _write(unit, "want", "stop\n")
            _wait(lambda: not _active(unit))
        elif cmd == "is-active":
            active = _active(unit)
            print("active" if active else ("failed" if _read_info(unit).get("state") == "failed" else "inactive"))
            rc = max(rc, 0 if active else 3)
        elif cmd == "is-enabled":
            if not known:
                print(f"Failed to get unit file state for {unit}: No such file or directory", file=sys.stderr)
                rc = max(rc, 1)
            else:
                print("enabled" if _enabled(unit) else "disabled")
                rc = max(rc, 0 if _enabled(unit) else 1)
        elif cmd == "is-failed":
            failed = _read_info(unit).get("state") == "failed"
            print("failed" if failed else "active" if _active(unit) else "inactive")
            rc = max(rc, 0 if failed else 1)
        elif cmd == "status":
            if not known:
                print(f"Unit {unit} could not be found.", file=sys.stderr)
                rc = max(rc, 4)
                continue
            info = _read_info(unit)
            active = _active(unit)
            svc = parse_unit(unit)
            print(f"* {unit}\n     Loaded: loaded ({svc['files'][0]}; {'enabled' if _enabled(unit) else 'disabled'})")
            for d in svc["files"][1:]:
                print(f"    Drop-In: {d}")
            state = "active (running)" if active else info.get("state", "inactive")
            print(f"     Active: {state} since {time.ctime(info.get('since', time.time()))}")
            if active:
                print(f"   Main PID: {info.get('pid')}")
            print(f"   (lab host: run by mlplat-init, not systemd; restarts {info.get('restarts', 0)})")
            rc = max(rc, 0 if active else 3)
        elif cmd in ("show",):
            info = _read_info(unit)
            print(f"ActiveState={'active' if _active(unit) else info.get('state', 'inactive')}")
            print(f"MainPID={info.get('pid') or 0}")
            print(f"UnitFileState={'enabled' if _enabled(unit) else 'disabled'}")
        else:
            print(f"mlplat lab systemctl: {cmd} is not supported by the lab's init", file=sys.stderr)
            rc = 1
    return rc


def journalctl(argv: list[str]) -> int:
    units, lines, i = [], 200, 0
    while i < len(argv):
        a = argv[i]
        if a in ("-u", "--unit") and i + 1 < len(argv):
            units.append(_unit_name(argv[i + 1]))
            i += 1
        elif a.startswith("--unit="):
            units.append(_unit_name(a.split("=", 1)[1]))
        elif a in ("-n", "--lines") and i + 1 < len(argv):
            lines = int(argv[i + 1]) if argv[i + 1].isdigit() else lines
            i += 1
        elif a.startswith("--lines="):
            lines = int(a.split("=", 1)[1])
        i += 1
    if not units:
        print("mlplat lab journalctl: only -u UNIT is supported (logs are in " + LOGS + ")", file=sys.stderr)
        return 1
    for unit in units:
        try:
            text = open(os.path.join(LOGS, unit + ".log"), errors="replace").read().splitlines()
        except OSError:
            print("-- No entries --")
            continue
        print("\n".join(text[-lines:]))
    return 0


def main(argv: list[str]) -> int:
    prog = os.path.basename(argv[0])
    if prog == "systemctl":
        return systemctl(argv[1:])
    if prog == "journalctl":
        return journalctl(argv[1:])
    if len(argv) >= 2 and argv[1] == "systemctl":
        return systemctl(argv[2:])
    if len(argv) >= 2 and argv[1] == "journalctl":
        return journalctl(argv[2:])
    if len(argv) >= 3 and argv[1] == "init":
        # argv: init <marker> -- <sshd command...>
        sep = argv.index("--")
        try:
            import ctypes

            ctypes.CDLL(None).prctl(15, b"mlplat-init", 0, 0, 0)  # PR_SET_NAME
        except Exception:
            pass
        return Init(argv[sep + 1:]).run()
    print("usage: supervisor.py init <marker> -- <sshd command> | systemctl ... | journalctl ...", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
