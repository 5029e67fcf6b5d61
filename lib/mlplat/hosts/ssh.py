"""SSH fan-out over Fabric: every host in parallel, pinned host keys, bounded time, results as data.

A :class:`HostPool` holds one :class:`HostConnection` per host (opened on first use, reused after)
and runs a function or a shell command on many hosts at once in a thread pool. Whatever happens on
one host (refused, silent, wrong key, failing command) becomes that host's failed
:class:`~mlplat.report.StepResult`; the other hosts carry on. Time is bounded: connecting by
``ssh.connect_timeout`` (TCP connect, SSH banner, key exchange and authentication each), every
command by ``ssh.command_timeout`` or the call's own ``timeout``.

Host keys are pinned: only the file named by ``ssh.known_hosts`` counts (no system or user
known_hosts, no ssh_config), unknown keys are refused, never added.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import shlex
import socket
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import fabric
import invoke
import paramiko

from ..params.load import load_params, resolve_secret
from ..params.schema import Host, Params, SecretRef
from ..report.progress import bar as progress_bar
from ..report.results import StepResult, Table, failed, results_table

DEFAULT_PORT = 22
# Paramiko logs a traceback for every failed handshake; the failure is reported as a result here, so
# keep it off stderr unless the application configures logging (a library adds only a NullHandler).
logging.getLogger("paramiko").addHandler(logging.NullHandler())
# What a command's message keeps of its output: enough for a hint to match, short enough for a table.
MESSAGE_CHARS = 400


class HostError(Exception):
    """A permanent failure to reach or use a host; the message says what to do."""


class Unreachable(HostError):
    """Nothing answers at the host's address and port (refused, timed out, no SSH banner)."""


class HostKeyError(HostError):
    """The host's key is not the pinned one (unknown or changed)."""


class UnknownHostKey(HostKeyError):
    """The host offered a key that the known_hosts file does not pin."""


class ChangedHostKey(HostKeyError):
    """The host offered a key different from the pinned one."""


class CommandTimeout(HostError):
    """A command ran longer than its timeout; its channel was closed."""


class CommandFailed(HostError):
    """A command exited non-zero where success was required; ``result`` holds its output."""

    def __init__(self, message: str, result: CommandResult):
        super().__init__(message)
        self.result = result


@dataclass
class CommandResult:
    """One finished command: its output, exit status and duration."""

    host: str
    command: str
    stdout: str
    stderr: str
    exit: int
    duration: float

    @property
    def ok(self) -> bool:
        return self.exit == 0

    def data(self) -> dict:
        """The fields a StepResult carries: stdout, stderr, exit."""
        return {"stdout": self.stdout, "stderr": self.stderr, "exit": self.exit}

    def summary(self) -> str:
        """A one-line account for tables: the exit status and the tail of the relevant output."""
        text = (self.stderr if not self.ok and self.stderr.strip() else self.stdout).strip()
        tail = " | ".join(text.splitlines()[-3:])
        if len(tail) > MESSAGE_CHARS:
            tail = "..." + tail[-MESSAGE_CHARS:]
        return f"exit {self.exit}" + (f": {tail}" if tail else "")


def fingerprint(key: paramiko.PKey) -> str:
    """A key's OpenSSH-style fingerprint: ``SHA256:<base64, unpadded>``, as ``ssh-keygen -l`` prints."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def known_hosts_name(address: str, port: int) -> str:
    """How known_hosts names a host: the bare address on port 22, ``[address]:port`` otherwise."""
    return address if port == DEFAULT_PORT else f"[{address}]:{port}"


def _keyscan_fix(address: str, port: int, key_type: str, known_hosts: Path) -> str:
    return f"ssh-keyscan -p {port} -t {_short_type(key_type)} {address} >> {known_hosts}"


class _RejectUnknown(paramiko.MissingHostKeyPolicy):
    """Refuse a key that is not pinned, saying how to pin it (paramiko's RejectPolicy, with the fix)."""

    def __init__(self, host: HostConnection):
        self.host = host

    def missing_host_key(self, client, hostname, key):
        h = self.host
        exists = h.known_hosts.is_file()
        where = f"known_hosts {h.known_hosts}" if exists else f"known_hosts {h.known_hosts} (the file does not exist)"
        raise UnknownHostKey(
            f"host key of {h.name} ({hostname}) not found in {where}: the host offered {key.get_name()} "
            f"{fingerprint(key)}. Compare that fingerprint with the host's own (on its console: "
            f"ssh-keygen -lf /etc/ssh/ssh_host_{_short_type(key.get_name())}_key.pub), then pin it: "
            f"{_keyscan_fix(h.address, h.port, key.get_name(), h.known_hosts)}")


def _short_type(key_type: str) -> str:
    return {"ssh-ed25519": "ed25519", "ssh-rsa": "rsa"}.get(key_type, "ecdsa" if "ecdsa" in key_type else key_type)


@dataclass(frozen=True)
class SSHSettings:
    """The SSH settings of one host, resolved from the params (per-host values win)."""

    user: str
    port: int
    key_file: Path | None
    known_hosts: Path
    connect_timeout: float
    command_timeout: float
    sudo_password: SecretRef | None


def _expand(path: str, base_dir: Path | None) -> Path:
    p = Path(os.path.expanduser(path))
    if not p.is_absolute() and base_dir is not None:
        p = base_dir / p
    return p.absolute()


def settings_for(params: Params, host: Host, base_dir: Path | None = None) -> SSHSettings:
    """Resolve the SSH settings of `host`: per-host ``ssh:`` overrides, ``~`` expanded, relative
    paths taken from `base_dir` (the params file's folder) or the working directory."""
    s = params.ssh
    key = host.ssh.key_file or s.key_file
    return SSHSettings(
        user=host.ssh.user or s.user,
        port=host.ssh.port or s.port,
        key_file=_expand(key, base_dir) if key else None,
        known_hosts=_expand(s.known_hosts, base_dir),
        connect_timeout=s.connect_timeout,
        command_timeout=s.command_timeout,
        sudo_password=s.sudo_password,
    )


class HostConnection:
    """One host's SSH connection: a thin wrapper around :class:`fabric.Connection` that adds the
    pinned host key check, the timeouts, sudo with a password from a reference, and results as data.

    Opened on first use; reopened when the transport has dropped. Not meant to be shared between
    threads running commands at the same time (the pool gives each host one thread per run).
    """

    def __init__(self, host: Host, settings: SSHSettings, sudo_password: Callable[[], str | None] | None = None):
        self.host = host
        self.name = host.name
        self.address = host.address
        self.settings = settings
        self.port = settings.port
        self.user = settings.user
        self.known_hosts = settings.known_hosts
        self._sudo_password = sudo_password or (lambda: None)
        self._conn: fabric.Connection | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<HostConnection {self.name} {self.user}@{self.address}:{self.port}>"

    # -- connecting ---------------------------------------------------------------------------

    def _new_connection(self) -> fabric.Connection:
        s = self.settings
        kwargs = {
            # Fabric casts its own connect_timeout to int (0.5 would become "no timeout"); paramiko
            # takes the float directly, and the same bound for the banner, auth and channel opening.
            "timeout": s.connect_timeout,
            "banner_timeout": s.connect_timeout,
            "auth_timeout": s.connect_timeout,
            "channel_timeout": s.connect_timeout,
        }
        if s.key_file is not None:
            kwargs.update(key_filename=[str(s.key_file)], look_for_keys=False, allow_agent=False)
        # lazy=True: no ~/.ssh/config, /etc/ssh/ssh_config or invoke config files; the params rule.
        config = fabric.Config(lazy=True, overrides={"load_ssh_configs": False})
        conn = fabric.Connection(self.address, user=s.user, port=s.port, config=config, connect_kwargs=kwargs)
        client = conn.client
        # Only the pinned file counts: Fabric loads no system known_hosts (and neither do we);
        # unknown keys are refused, nothing is added or saved.
        if self.known_hosts.is_file():
            client.load_host_keys(str(self.known_hosts))
        client.set_missing_host_key_policy(_RejectUnknown(self))
        return conn

    def open(self) -> fabric.Connection:
        """Connect (or reuse the live connection). Raises :class:`Unreachable`, :class:`HostKeyError`
        or :class:`HostError` with a message that says what happened and what to do."""
        with self._lock:
            if self._conn is not None and self._conn.is_connected:
                return self._conn
            if self._conn is not None:
                self._conn.close()
            conn = self._new_connection()
            try:
                conn.connect_kwargs["sock"] = self._socket()
                conn.open()
            except Exception as e:
                conn.close()
                raise self._explain_connect_error(e) from None
            self._conn = conn
            return conn

    def _socket(self) -> socket.socket:
        sock = socket.create_connection((self.address, self.port), timeout=self.settings.connect_timeout)
        # SSH exchanges many small packets; with Nagle on, each command waits for a delayed ACK (~40 ms).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _explain_connect_error(self, e: Exception) -> Exception:
        s = self.settings
        target = f"{self.address}:{self.port}"
        kind = type(e).__name__
        if isinstance(e, HostError):
            return e
        if isinstance(e, paramiko.BadHostKeyException):
            fix = (f"ssh-keygen -R {known_hosts_name(self.address, self.port)} -f {self.known_hosts} && "
                   f"{_keyscan_fix(self.address, self.port, e.key.get_name(), self.known_hosts)}")
            return ChangedHostKey(
                f"Host key for {self.name} ({target}) has changed: {self.known_hosts} pins "
                f"{e.expected_key.get_name()} {fingerprint(e.expected_key)}, the host offered "
                f"{e.key.get_name()} {fingerprint(e.key)}. Refused. If the host was reinstalled or its key "
                f"was regenerated on purpose, check the new fingerprint on its console, then: {fix}. "
                f"If not, the connection may be intercepted: do not connect.")
        if isinstance(e, (ConnectionRefusedError, paramiko.ssh_exception.NoValidConnectionsError)):
            return Unreachable(f"unreachable: {target} refused the connection ({kind}: {e})")
        if isinstance(e, (socket.timeout, TimeoutError)):
            return Unreachable(f"unreachable: {target} did not answer within {s.connect_timeout:g}s "
                               f"(connect timed out)")
        if isinstance(e, OSError) and not isinstance(e, paramiko.SSHException):
            return Unreachable(f"unreachable: {target}: {kind}: {e}")
        if isinstance(e, paramiko.AuthenticationException):
            key = f"key {s.key_file}" if s.key_file else "the ssh-agent and default keys"
            return HostError(f"{kind}: Authentication failed for {s.user}@{target} with {key} ({e})")
        text = str(e)
        # "No existing session": paramiko's handshake wait ended (timeout) before its reader thread
        # reported the missing banner; both mean the port is open but nothing speaks SSH in time.
        if "protocol banner" in text or "No existing session" in text:
            return Unreachable(f"unreachable: {target} accepted TCP but sent no SSH banner within "
                               f"{s.connect_timeout:g}s ({kind}: {text})")
        if isinstance(e, EOFError) or "Negotiation" in text or "timeout" in text.lower():
            return Unreachable(f"unreachable: {target}: SSH handshake failed ({kind}: {text})")
        return HostError(f"{kind}: {text}")

    @property
    def connection(self) -> fabric.Connection:
        """The open :class:`fabric.Connection`, for what this wrapper does not cover (put/get...)."""
        return self.open()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # -- commands -----------------------------------------------------------------------------

    def run(self, command: str, *, timeout: float | None = None, check: bool = False,
            stdin: str | None = None) -> CommandResult:
        """Run `command` in the user's shell. `stdin` is fed to it when given. Raises
        :class:`CommandTimeout` after `timeout` (default ``ssh.command_timeout``) and, with
        `check`, :class:`CommandFailed` on a non-zero exit."""
        conn = self.open()
        return self._execute(conn.run, command, command, timeout, check, stdin)

    def sudo(self, command: str, *, timeout: float | None = None, check: bool = False,
             stdin: str | None = None) -> CommandResult:
        """Run `command` as root. As root already: run directly. Otherwise ``sudo``, answered with
        the password from ``ssh.sudo_password`` (a reference, resolved once, never logged) when sudo
        prompts for it (the command's stdin then stays open: give it no command that reads stdin);
        with no reference, ``sudo -n`` (fails fast where a password is needed)."""
        if self.user == "root":
            return self.run(command, timeout=timeout, check=check, stdin=stdin)
        conn = self.open()
        wrapped = f"sh -c {shlex.quote(command)}"
        password = self._sudo_password()
        if password is None:
            return self._execute(conn.run, f"sudo -n -- {wrapped}", command, timeout, check, stdin)
        if stdin is not None:
            raise ValueError("stdin cannot be combined with a sudo password (sudo reads the password from stdin)")

        def call(cmd, **kw):
            return conn.sudo(cmd, password=password, **kw)

        return self._execute(call, wrapped, command, timeout, check, None, keep_stdin=True)

    def write_file(self, path: str, content: str, mode: int = 0o644, timeout: float | None = 120) -> None:
        """Write `content` to `path` as root: a temp file beside it, then a rename. The content never
        appears on a command line (sudo logs those, and ``ps`` shows them): it goes through stdin,
        to sudo, or, where sudo reads a password from stdin, to a private (0600) temp file in the
        user's home, which sudo then copies into place. Raises :class:`CommandFailed` when it cannot."""
        q, tmp = shlex.quote(path), shlex.quote(path + ".mlplat-tmp")
        # Folders as usual (0755: apt reads /etc/apt/keyrings as _apt); the temp file private.
        head = f"(umask 022 && mkdir -p -- \"$(dirname -- {q})\") && umask 077 && "
        tail = f" && chmod {mode:o} {tmp} && mv -f {tmp} {q}"
        if self.user == "root" or self._sudo_password() is None:
            self.sudo(head + f"cat > {tmp}" + tail, stdin=content, check=True, timeout=timeout)
            return
        # As the user (no sudo, so stdin is free): a private copy in the home folder.
        staged = self.run("umask 077 && f=$(mktemp \"$HOME/.mlplat-upload.XXXXXX\") && cat > \"$f\" && echo \"$f\"",
                          stdin=content, check=True, timeout=timeout).stdout.strip()
        try:
            self.sudo(head + f"cp -- {shlex.quote(staged)} {tmp}" + tail, check=True, timeout=timeout)
        finally:
            self.run(f"rm -f -- {shlex.quote(staged)}", timeout=timeout)

    def _execute(self, call, command: str, shown: str, timeout, check, stdin, keep_stdin=False) -> CommandResult:
        limit = timeout if timeout is not None else self.settings.command_timeout
        # Without input the command's stdin is at EOF (like ssh -n), so nothing waits on a prompt
        # until the timeout; sudo's password answer needs it open instead.
        in_stream = False if keep_stdin else io.StringIO(stdin or "")
        t0 = time.monotonic()
        try:
            r = call(command, hide=True, warn=True, pty=False, timeout=limit, encoding="utf-8", in_stream=in_stream)
        except invoke.exceptions.CommandTimedOut:
            raise CommandTimeout(f"command timed out after {limit:g}s on {self.name}: {_short(shown)}") from None
        except invoke.exceptions.AuthFailure:
            raise HostError(f"sudo: incorrect password attempt for {self.user}@{self.name} (the password comes "
                            f"from ssh.sudo_password)") from None
        except invoke.exceptions.UnexpectedExit as e:  # only when warn is overridden; kept for safety
            r = e.result
        stderr = r.stderr
        if self.user != "root" and "[sudo] password: " in stderr:
            stderr = stderr.replace("[sudo] password: ", "")
        res = CommandResult(self.name, shown, r.stdout, stderr, r.exited if r.exited is not None else -1,
                            time.monotonic() - t0)
        if check and not res.ok:
            raise CommandFailed(f"{_short(shown)}: {res.summary()}", res)
        return res


def _short(command: str, limit: int = 120) -> str:
    one = " ".join(command.split())
    return one if len(one) <= limit else one[: limit - 3] + "..."


HostFn = Callable[[HostConnection, Host], StepResult | list | None]


def _follow(futures, names: list[str], step: str) -> None:
    """Wait for every host with a progress bar (hosts done of all, and who is still at it): a
    widget in JupyterLab, text lines in batch runs once the wait is long (report.progress)."""
    by_future = dict(zip(futures, names))
    pending = set(futures)
    # A fan-out nested in another one's worker thread stays quiet: the outer bar tells the story,
    # and a notebook cell's output belongs to its main thread.
    quiet = threading.current_thread() is not threading.main_thread()
    with progress_bar(total=len(futures), desc=step, unit="host", disable=quiet) as bar:
        while pending:
            done, pending = wait(pending, timeout=1.0)
            left = sorted(by_future[f] for f in pending)
            bar.set_postfix_str(f"waiting for {', '.join(left)}"[:60] if left else "", refresh=False)
            bar.update(len(done))  # update(0) too: keeps the elapsed time moving while a host is slow


class HostPool:
    """Every host of a params file, reachable over SSH in parallel.

    ``pool.run(fn, step)`` calls ``fn(conn, host)`` for every host at once (up to
    ``ssh.parallel`` threads) and returns one StepResult per host, in the params' host order;
    ``pool.sh(cmd, step)`` runs a shell command the same way. Connections are opened on first use
    and reused until :meth:`close` (or the end of a ``with`` block).
    """

    def __init__(self, params: Params, *, base_dir: str | os.PathLike | None = None):
        """`base_dir`: where relative paths in ``ssh:`` (known_hosts, key_file) start; the params
        file's folder when built with :meth:`from_file`, else the working directory."""
        self.params = params
        self.base_dir = Path(base_dir).absolute() if base_dir is not None else None
        self.hosts: list[Host] = list(params.hosts)
        self._conns: dict[str, HostConnection] = {}
        self._lock = threading.Lock()
        self._password: str | None = None
        self._password_lock = threading.Lock()

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> HostPool:
        """Load and validate a params file; relative SSH paths are taken from its folder."""
        p = Path(path)
        return cls(load_params(p), base_dir=p.absolute().parent)

    def __enter__(self) -> HostPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _sudo_password(self) -> str | None:
        ref = self.params.ssh.sudo_password
        if ref is None:
            return None
        with self._password_lock:
            if self._password is None:
                self._password = resolve_secret(ref)
            return self._password

    def connection(self, host: Host | str) -> HostConnection:
        """The (cached) connection wrapper of one host, by Host or name."""
        h = self._host(host)
        with self._lock:
            c = self._conns.get(h.name)
            if c is None:
                c = HostConnection(h, settings_for(self.params, h, self.base_dir), self._sudo_password)
                self._conns[h.name] = c
            return c

    def _host(self, host: Host | str) -> Host:
        if isinstance(host, Host):
            return host
        for h in self.hosts:
            if h.name == host:
                return h
        raise KeyError(f"no host named {host!r} in the params (hosts: {', '.join(h.name for h in self.hosts)})")

    def select(self, hosts: Iterable[Host | str] | None) -> list[Host]:
        """The hosts to act on: all of them, or those named (in the params' order)."""
        if hosts is None:
            return list(self.hosts)
        wanted = {self._host(h).name for h in hosts}
        return [h for h in self.hosts if h.name in wanted]

    def run(self, fn: HostFn, step: str, hosts: Iterable[Host | str] | None = None) -> list[StepResult]:
        """Call ``fn(conn, host)`` on every host in parallel. `fn` returns a StepResult, a list of
        them, or None (ok); an exception becomes that host's failed result, with the exception's
        type and text as the message (and a hint from the known signatures)."""
        targets = self.select(hosts)
        if not targets:
            return []
        workers = max(1, min(self.params.ssh.parallel, len(targets)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mlplat-ssh") as ex:
            futures = [ex.submit(self._one, fn, step, h) for h in targets]
            _follow(futures, [h.name for h in targets], step)
            out: list[StepResult] = []
            for f in futures:
                out.extend(f.result())
        return out

    def _one(self, fn: HostFn, step: str, host: Host) -> list[StepResult]:
        t0 = time.monotonic()
        try:
            conn = self.connection(host)
            got = fn(conn, host)
        except HostError as e:
            return [failed(host.name, step, str(e), duration=time.monotonic() - t0)]
        except Exception as e:  # a step's own bug or an unexpected library error: still one host's failure
            return [failed(host.name, step, f"{type(e).__name__}: {e}", duration=time.monotonic() - t0)]
        elapsed = time.monotonic() - t0
        if got is None:
            got = [StepResult(host=host.name, step=step)]
        elif isinstance(got, StepResult):
            got = [got]
        for r in got:
            if not r.duration:
                r.duration = elapsed
        return list(got)

    def sh(self, command: str, step: str, sudo: bool = False, timeout: float | None = None,
           hosts: Iterable[Host | str] | None = None, check: bool = True) -> list[StepResult]:
        """Run a shell command on every host. Each result's ``data`` holds stdout, stderr and exit;
        with `check` a non-zero exit is a failure (message: exit status and the end of stderr)."""

        def one(conn: HostConnection, host: Host) -> StepResult:
            call = conn.sudo if sudo else conn.run
            r = call(command, timeout=timeout)
            return StepResult(host=host.name, step=step, ok=r.ok or not check, message=r.summary(),
                              duration=r.duration, data=r.data())

        return self.run(one, step, hosts)

    def connect(self, step: str = "ssh | connect", hosts: Iterable[Host | str] | None = None) -> list[StepResult]:
        """Open (or check) the connection to every host; ``data`` holds user, address, port and the
        host key's fingerprint."""

        def one(conn: HostConnection, host: Host) -> StepResult:
            c = conn.open()
            key = c.transport.get_remote_server_key()
            return StepResult(host=host.name, step=step,
                              message=f"{conn.user}@{conn.address}:{conn.port} {key.get_name()} {fingerprint(key)}",
                              data={"user": conn.user, "address": conn.address, "port": conn.port,
                                    "host_key": f"{key.get_name()} {fingerprint(key)}"})

        return self.run(one, step, hosts)

    def check_sudo(self, step: str = "ssh | sudo", hosts: Iterable[Host | str] | None = None) -> list[StepResult]:
        """Check that commands run as root on every host (sudo with the password reference, or root)."""

        def one(conn: HostConnection, host: Host) -> StepResult:
            r = conn.sudo("id -u", check=True)
            ok = r.stdout.strip() == "0"
            how = "as root" if conn.user == "root" else ("sudo with password" if self.params.ssh.sudo_password
                                                         else "sudo without password")
            return StepResult(host=host.name, step=step, ok=ok,
                              message=(f"root ok ({how})" if ok else f"sudo ran as uid {r.stdout.strip()}, not 0"),
                              data=r.data())

        return self.run(one, step, hosts)

    @staticmethod
    def table(results: Iterable[StepResult], title: str = "") -> Table:
        """The standard results table (see :func:`mlplat.report.results_table`)."""
        return results_table(results, title)

    def close(self) -> None:
        """Close every open connection."""
        with self._lock:
            conns = list(self._conns.values())
            self._conns.clear()
        for c in conns:
            c.close()
