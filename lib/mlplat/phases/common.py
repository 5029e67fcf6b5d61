"""What every phase notebook shares: finding the params file, the phase context, the verdict.

A notebook imports its phase module in its first cell, sets parameters, then calls
``phase.setup(...)``. Step functions fetch the context with :func:`context`; called before the
setup cell ran, they stop with one clear message naming that cell instead of a NameError.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..params import Params, load_params
from ..report import Phase, Table

PARAMS_ENV = "MLPLAT_PARAMS"
RUN_DIR_ENV = "MLPLAT_RUN_DIR"


class SetupFirst(RuntimeError):
    """A step cell ran before the notebook's setup cell."""

    def _render_traceback_(self) -> list[str]:
        # IPython shows this instead of a traceback through library internals: the message is
        # the whole story (which cell to run first).
        return [f"\x1b[0;31mSetupFirst\x1b[0m: {self}"]


def repo_root() -> Path:
    """The repository root (the directory holding pyproject.toml), for default paths."""
    here = Path(__file__).resolve()
    for p in here.parents:
        if (p / "pyproject.toml").exists() and (p / "notebooks").is_dir():
            return p
    return Path.cwd()


def default_lab_params() -> Path:
    """Where `mlplat lab up` writes the lab's params file."""
    base = os.environ.get("MLPLAT_LAB_DIR") or str(repo_root() / ".lab")
    return Path(base) / "params.yaml"


def find_params_file(params_file: str | os.PathLike | None) -> Path:
    """The params file to use: the argument, else $MLPLAT_PARAMS, else the lab's file if it exists."""
    for cand in (params_file, os.environ.get(PARAMS_ENV)):
        if cand:
            p = Path(os.path.expanduser(str(cand)))
            if not p.exists():
                raise FileNotFoundError(f"params file {p} does not exist")
            return p
    lab = default_lab_params()
    if lab.exists():
        return lab
    raise FileNotFoundError(
        "no params file: set params_file in the parameters cell, export MLPLAT_PARAMS=/path/site.yaml, "
        "or run `mlplat lab up` to create the lab's params file")


@dataclass
class Context:
    """One phase run: validated params, mode, where outputs go, and the recorded steps."""

    params: Params
    params_path: Path
    phase: Phase
    run_dir: Path | None
    confirm: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def mode(self) -> str:
        return self.phase.mode

    @property
    def apply(self) -> bool:
        return self.phase.mode == "apply"


_CONTEXTS: dict[str, Context] = {}


def setup(number: str, name: str, params_file: str = "", mode: str = "plan", run_dir: str = "",
          confirm: bool = False) -> Context:
    """Load and validate the params, and start (or restart) the phase's context.

    Re-running the setup cell starts afresh: earlier step results are dropped.
    """
    if mode not in ("plan", "apply"):
        raise ValueError(f"mode must be 'plan' or 'apply', not {mode!r}")
    path = find_params_file(params_file)
    params = load_params(path)
    _close(_CONTEXTS.pop(number, None))
    rd = run_dir or os.environ.get(RUN_DIR_ENV) or ""
    ctx = Context(params=params, params_path=path, phase=Phase(number, name, mode),
                  run_dir=Path(rd) if rd else None, confirm=bool(confirm or params.confirm))
    _CONTEXTS[number] = ctx
    return ctx


def _close(ctx: Context | None) -> None:
    """Close the SSH connections an earlier run of the setup cell opened, so that running it again
    in JupyterLab leaks none. (Only host pools: other objects may be shared, e.g. cached clients.)"""
    from ..hosts import HostPool

    for v in (ctx.extra.values() if ctx else ()):
        if isinstance(v, HostPool):
            try:
                v.close()
            except Exception:  # closing a stale connection must not stop the new setup
                pass


def context(number: str, setup_cell: str = "Setup") -> Context:
    """The phase's context; a clear error when the setup cell has not run yet."""
    try:
        return _CONTEXTS[number]
    except KeyError:
        raise SetupFirst(
            f"run the '{setup_cell}' cell first (it loads the params and starts phase {number}); "
            "then run this cell again") from None


def finish(number: str) -> None:
    """Write and show the phase verdict (raises PhaseFailed when not ok)."""
    ctx = context(number)
    ctx.phase.finish(ctx.run_dir)


def header_table(ctx: Context) -> Table:
    """A small table of what this run uses: params file, site, mode, hosts."""
    import pandas as pd

    p = ctx.params
    rows = [{"setting": "params file", "value": ctx.params_path.name},
            {"setting": "site", "value": p.site},
            {"setting": "mode", "value": ctx.mode},
            {"setting": "hosts", "value": ", ".join(h.name for h in p.hosts)},
            {"setting": "lab", "value": f"yes ({p.lab.nodes} nodes)" if p.lab else "no"}]
    return Table(pd.DataFrame(rows), f"Phase {ctx.phase.number} {ctx.phase.name}", status_col=None)


def start(number: str, name: str, params_file: str = "", mode: str = "plan", run_dir: str = "",
          confirm: bool = False) -> Table:
    """The usual setup cell: :func:`setup`, then the header table."""
    return header_table(setup(number, name, params_file, mode, run_dir, confirm))


def planned(number: str, steps: list[tuple[str, str, str]]) -> Table:
    """For phases whose steps are not built yet: one row per planned step, marked skipped with the
    issue that builds it, so a run says plainly what it did not do."""
    from ..report import skipped

    ctx = context(number)
    rows = [skipped("(all hosts)", step, f"not built yet ({issue}); will {what}") for step, what, issue in steps]
    return ctx.phase.record("plan", rows, f"Planned steps ({ctx.mode} mode)")


def skeleton(number: str, name: str, steps: list[tuple[str, str, str]]):
    """The setup/plan/finish functions of a phase whose steps are not built yet."""

    def setup_(params_file: str = "", mode: str = "plan", run_dir: str = "", confirm: bool = False) -> Table:
        """Load and validate the params; show what this run uses."""
        return start(number, name, params_file, mode, run_dir, confirm)

    def plan_() -> Table:
        """The steps this phase will run, marked skipped until they are built."""
        return planned(number, steps)

    def finish_() -> None:
        """Write the verdict."""
        finish(number)

    return setup_, plan_, finish_


def kube(ctx: Context):
    """The site's cluster connection (``cluster.kubeconfig.connect``), kept on the context; None
    while there is no kubeconfig yet, with the reason in ``ctx.extra["kube_error"]``. A failed
    attempt is not remembered, so a step after ``kubeadm init`` connects."""
    if ctx.extra.get("kube") is None:
        from ..cluster import kubeconfig

        try:
            ctx.extra["kube"] = kubeconfig.connect(ctx.params)
        except FileNotFoundError as e:
            ctx.extra["kube"] = None
            ctx.extra["kube_error"] = str(e)
    return ctx.extra["kube"]
