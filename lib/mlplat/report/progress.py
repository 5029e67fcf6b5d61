"""Progress bars for long waits: a widget in JupyterLab, plain text lines everywhere else.

tqdm's auto mode picks its notebook widget whenever code runs in a Jupyter kernel, including the
kernels that papermill, nbclient and nbval drive, where nothing renders widgets: the archived
notebook then holds widget views whose HTML rendering is empty or says "Error displaying widget".
So :func:`bar` decides per cell execution: a widget when the cell came from an interactive
front end (JupyterLab sends ``allow_stdin: true``; batch executors say they cannot answer
``input()``), text lines otherwise.

Text mode writes whole lines (no carriage returns, no cursor movement: they read well in a
rendered notebook and a log), only once a wait has lasted ``delay`` seconds, then at most every
``interval`` seconds, plus a last line when done. Quick steps add no output, so golden notebooks
stay stable. Widgets show at once.

Environment: ``MLPLAT_PROGRESS`` = ``widget`` | ``text`` | ``off`` forces a mode;
``MLPLAT_PROGRESS_DELAY`` sets text mode's delay in seconds (default 5).
"""

from __future__ import annotations

import io
import os
import re
import sys

MODES = ("widget", "text", "off")
TEXT_DELAY = 5.0
TEXT_INTERVAL = 15.0
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _kernel():
    """The running ipykernel's Kernel object, or None outside a Jupyter kernel."""
    if "ipykernel" not in sys.modules or "IPython" not in sys.modules:
        return None
    ip = sys.modules["IPython"].get_ipython()
    return getattr(ip, "kernel", None)


def interactive(kernel=None) -> bool:
    """Whether the cell now running was sent by an interactive front end (it allows stdin)."""
    kernel = kernel or _kernel()
    if kernel is None:
        return False
    try:
        content = (kernel.get_parent() or {}).get("content") or {}
        if "allow_stdin" in content:
            return bool(content["allow_stdin"])
    except Exception:  # an older or unusual kernel: fall back to what it recorded for input()
        pass
    return bool(getattr(kernel, "_allow_stdin", False))


def mode() -> str:
    """``widget``, ``text`` or ``off`` for a bar made now (see the module docstring)."""
    forced = os.environ.get("MLPLAT_PROGRESS", "").strip().lower()
    if forced in MODES:
        return forced
    if not interactive():
        return "text"
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return "text"
    return "widget"


def text_delay() -> float:
    try:
        return float(os.environ.get("MLPLAT_PROGRESS_DELAY", TEXT_DELAY))
    except ValueError:
        return TEXT_DELAY


class LineWriter(io.TextIOBase):
    """A file for tqdm that turns its carriage-return redraws into whole, distinct lines."""

    def __init__(self, stream=None):
        self.stream = stream
        self.last = ""

    def _out(self):
        return self.stream or sys.stdout  # looked up late: a kernel swaps sys.stdout per cell

    def write(self, s: str) -> int:
        for part in re.split(r"[\r\n]", s):
            part = _ANSI.sub("", part).rstrip()
            if part and part != self.last:
                self._out().write(part + "\n")
                self.last = part
        return len(s)

    def flush(self) -> None:
        self._out().flush()

    def isatty(self) -> bool:
        return False


def bar(iterable=None, *, total=None, desc: str = "", unit: str = "it", leave: bool = True, **kw):
    """A tqdm bar for a long wait, in the form that suits where the code runs (module docstring).

    Takes tqdm's arguments. Update it with ``bar.update(n)``; ``bar.update(0)`` in a polling loop
    keeps the elapsed time (and text mode's lines) going while nothing finishes. ``disable=None``
    means enabled here: text lines suit a log as well as a terminal.
    """
    from tqdm.std import tqdm as text_tqdm

    m = mode()
    if kw.get("disable") is None:
        kw.pop("disable", None)
    # Explicit miniters: update(0) then refreshes on time alone (tqdm's dynamic default would not).
    kw.setdefault("miniters", 0)
    if m == "off":
        kw["disable"] = True
        cls = text_tqdm
    elif m == "widget":
        from tqdm.notebook import tqdm as cls
    else:
        cls = text_tqdm
        if _kernel() is not None or not sys.stderr.isatty():
            kw.setdefault("file", LineWriter())
            kw.setdefault("ascii", True)
            kw.setdefault("ncols", 100)
            kw.setdefault("delay", text_delay())
            kw.setdefault("mininterval", TEXT_INTERVAL)
    return cls(iterable, total=total, desc=desc, unit=unit, leave=leave, **kw)


# For code written against tqdm.auto: `from mlplat.report.progress import tqdm`.
tqdm = bar
