"""`mlplat notebook`: JupyterLab for stepping through the phase notebooks by hand.

- the project's Jupyter kernel, ``mlplat``, points at this Python (the environment mlplat is
  installed in); it is installed, or repaired, when missing or pointing elsewhere;
- JupyterLab listens on 127.0.0.1 only, with a token (``$JUPYTER_TOKEN`` or a fresh random one),
  opens the notebooks folder and offers only the mlplat kernel, so every notebook runs with it;
- ``MLPLAT_PARAMS`` is set for the kernels it starts: the params file given, else the lab's, so the
  notebooks' setup cells find it exactly as they do under ``mlplat run``.

The kernel loads this module as an IPython extension: a step cell run in a fresh kernel, before the
notebook's first cells (``phase`` not defined yet), then says which cells to run first instead of
showing a NameError; once the import ran, :func:`mlplat.phases.common.context` says the same.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
import tempfile
from pathlib import Path

KERNEL_NAME = "mlplat"
HOST = "127.0.0.1"
DEFAULT_PORT = 8888
# The names every phase notebook defines in its first cells (the import and the parameters cell).
NOTEBOOK_NAMES = {
    "phase": "the first code cell imports the phase module as `phase`",
    "params_file": "the parameters cell sets it",
    "mode": "the parameters cell sets it",
    "run_dir": "the parameters cell sets it",
    "confirm": "the parameters cell sets it",
}


class NotebookError(Exception):
    """JupyterLab cannot start as asked (port taken, no params file...); the message says why."""


# -- the kernel ------------------------------------------------------------------------------------

def kernel_argv() -> list[str]:
    """How the mlplat kernel starts: this Python, ipykernel, and this module as an extension."""
    return [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}", f"--ext={__name__}"]


def find_kernel() -> Path | None:
    """The installed mlplat kernelspec folder, or None."""
    from jupyter_client.kernelspec import KernelSpecManager

    d = KernelSpecManager().find_kernel_specs().get(KERNEL_NAME)
    return Path(d) if d else None


def ensure_kernel() -> tuple[Path, bool]:
    """Install the mlplat kernelspec unless an identical one is there. Returns (its folder, whether
    it was installed now). Installed into this environment (sys.prefix) when writable, else for
    the user."""
    from jupyter_client.kernelspec import KernelSpecManager

    current = find_kernel()
    if current is not None:
        try:
            spec = json.loads((current / "kernel.json").read_text())
            if spec.get("argv") == kernel_argv():
                return current, False
        except (OSError, json.JSONDecodeError):
            pass  # unreadable: install over it
    from ipykernel.kernelspec import write_kernel_spec

    with tempfile.TemporaryDirectory(prefix="mlplat-kernel-") as tmp:
        src = write_kernel_spec(Path(tmp) / KERNEL_NAME, overrides={
            "display_name": f"mlplat (Python {sys.version_info.major}.{sys.version_info.minor})",
            "argv": kernel_argv(),
        })
        prefix = sys.prefix if os.access(sys.prefix, os.W_OK) else None
        dest = KernelSpecManager().install_kernel_spec(str(src), KERNEL_NAME, user=prefix is None, prefix=prefix)
    return Path(dest), True


def load_ipython_extension(ip) -> None:
    """Loaded by the mlplat kernel (``--ext``): NameErrors of the notebooks' own names become the
    one message saying which cells to run first."""
    ip.set_custom_exc((NameError,), _name_error)


def _name_error(shell, etype, value, tb, tb_offset=None):
    name = getattr(value, "name", None)
    if name not in NOTEBOOK_NAMES:
        return shell.showtraceback((etype, value, tb), tb_offset=tb_offset)
    from .phases.common import SetupFirst

    err = SetupFirst(f"`{name}` is not defined yet ({NOTEBOOK_NAMES[name]}): run the cells from the top "
                     "through the 'Setup' cell first; then run this cell again")
    return shell.showtraceback((SetupFirst, err, None))  # one line: SetupFirst._render_traceback_


# -- JupyterLab ------------------------------------------------------------------------------------

def default_notebook_dir() -> Path:
    from .phases.common import repo_root

    return Path(os.environ.get("MLPLAT_NOTEBOOKS") or repo_root() / "notebooks")


def select_params(params: str | os.PathLike | None) -> Path | None:
    """The params file the notebooks get: the one given, else $MLPLAT_PARAMS, else the lab's."""
    from .phases.common import PARAMS_ENV, default_lab_params

    cand = params or os.environ.get(PARAMS_ENV)
    if cand:
        p = Path(os.path.expanduser(str(cand))).resolve()
        if not p.is_file():
            raise NotebookError(f"params file {p} does not exist")
        return p
    lab = default_lab_params()
    return lab.resolve() if lab.is_file() else None


def port_free(port: int, host: str = HOST) -> bool:
    """Nothing listens on host:port (a port in TIME_WAIT counts as free, as it does for Jupyter)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def lab_argv(port: int, notebook_dir: Path) -> list[str]:
    """The JupyterLab command line: loopback only, one port (no silent move to another), the
    notebooks folder, only the mlplat kernel over IPC, no update or news checks (the site may be
    offline)."""
    argv = [sys.executable, "-m", "jupyterlab", "--no-browser",
            f"--ServerApp.ip={HOST}", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
            f"--ServerApp.root_dir={notebook_dir}",
            f"--KernelSpecManager.allowed_kernelspecs={KERNEL_NAME}",
            f"--MappingKernelManager.default_kernel_name={KERNEL_NAME}",
            # Kernel sockets as files in the private runtime folder, not loopback TCP ports that
            # any local user could reach (as `mlplat run` does).
            "--KernelManager.transport=ipc",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.news_url=None"]
    if os.geteuid() == 0:
        argv.append("--allow-root")  # the lab needs root; JupyterLab refuses root without this
    return argv


def url(port: int, token: str, path: str = "lab") -> str:
    return f"http://{HOST}:{port}/{path}?token={token}"


def prepare(params=None, port: int = DEFAULT_PORT, notebook_dir=None, token: str | None = None) -> dict:
    """Everything `mlplat notebook` needs, checked: argv, env, url, and what it chose."""
    nb_dir = Path(notebook_dir or default_notebook_dir()).resolve()
    if not nb_dir.is_dir():
        raise NotebookError(f"notebook folder {nb_dir} does not exist")
    if not port_free(port):
        raise NotebookError(f"port {port} on {HOST} is in use (another JupyterLab?); give --port N")
    chosen = select_params(params)
    # The token travels in the environment, not on the command line, where `ps` shows it to
    # every local user.
    token = token or os.environ.get("JUPYTER_TOKEN") or secrets.token_hex(24)
    env = dict(os.environ, JUPYTER_TOKEN=token)
    if chosen is not None:
        env["MLPLAT_PARAMS"] = str(chosen)
    env.pop("MLPLAT_RUN_DIR", None)  # interactive runs write no verdict into some earlier run's folder
    return {"argv": lab_argv(port, nb_dir), "env": env, "url": url(port, token), "params": chosen,
            "notebook_dir": nb_dir, "port": port}


def serve(params=None, port: int = DEFAULT_PORT, notebook_dir=None, out=None) -> None:
    """Install the kernel if needed, say what is selected, then become JupyterLab (exec)."""
    out = out or sys.stdout
    plan = prepare(params, port, notebook_dir)
    kdir, installed = ensure_kernel()
    print(f"kernel: {KERNEL_NAME} ({'installed' if installed else 'present'} in {kdir}) -> {sys.executable}",
          file=out)
    if plan["params"] is not None:
        print(f"params: {plan['params']} (MLPLAT_PARAMS; a notebook's params_file cell overrides it)", file=out)
    else:
        print("params: none selected (no --params, no $MLPLAT_PARAMS, no lab): set params_file in a "
              "notebook's parameters cell, or run `mlplat lab up` first", file=out)
    print(f"notebooks: {plan['notebook_dir']}", file=out)
    print(f"JupyterLab: {plan['url']}", file=out, flush=True)
    os.execve(plan["argv"][0], plan["argv"], plan["env"])
