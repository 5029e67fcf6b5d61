"""Helpers of the browser tests (imported by conftest.py and the test modules)."""

from __future__ import annotations

import os
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

CHROMIUM = ("/usr/lib/chromium/chromium", "/usr/bin/chromium")
CHROMEDRIVER = "/usr/bin/chromedriver"


def chromium_binary() -> str | None:
    # The binary itself: /usr/bin/chromium is a wrapper script that adds flags (remote extensions...).
    return next((c for c in CHROMIUM if os.access(c, os.X_OK)), None)


def browser_unavailable() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if chromium_binary() is None:
        return "chromium not installed (apt-get install chromium; `make test` does)"
    if not os.access(CHROMEDRIVER, os.X_OK):
        return "chromedriver not installed (apt-get install chromium-driver; `make test` does)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium not installed (pip install -e '.[test]')"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(url: str, headers: dict | None = None) -> tuple[int, dict]:
    """Status and headers of a GET, redirects not followed."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **k):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with opener.open(req, timeout=10) as r:
            return r.status, dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers)


class JupyterLab:
    """A JupyterLab started by `mlplat notebook` for one test module."""

    def __init__(self, proc: subprocess.Popen, url: str, port: int, token: str, notebook_dir: Path, log: Path,
                 params: Path):
        self.proc, self.url, self.port, self.token = proc, url, port, token
        self.notebook_dir, self.log, self.params = notebook_dir, log, params

    def base(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def open_url(self, path: str) -> str:
        return f"{self.base(path)}?token={self.token}"


