"""Fixtures of the browser tests: Debian's headless Chromium driven by Selenium through the system
chromedriver, JupyterLab started by `mlplat notebook`, and a folder for screenshots.

Nothing is downloaded: the driver is /usr/bin/chromedriver, given to Selenium explicitly, and
Selenium Manager (which would fetch one) is made to fail loudly should anything call it. Without
chromium, chromedriver or selenium the tests skip with the reason (`make test` installs them).

Screenshots go to a folder under pytest's tmp dir, named at the end of the session; with
MLPLAT_UPDATE_SCREENSHOTS=1 they are also optimized and copied to docs/img/ for the README.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from browser_helpers import (
    CHROMEDRIVER,
    JupyterLab,
    browser_unavailable,
    chromium_binary,
    free_port,
    http_status,
)

ROOT = Path(__file__).resolve().parents[2]
DOCS_IMG = ROOT / "docs" / "img"
VIEWPORT = (1200, 800)
# The screenshots README.md shows (the others stay test artifacts).
README_SHOTS = {"jupyterlab-00_preflight.png", "run-history.png"}
# The closed network refuses Chromium's background connections; these keep it from trying.
CHROME_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage", "--disable-extensions", "--disable-default-apps",
               "--no-default-browser-check", "--hide-scrollbars", "--force-device-scale-factor=1",
               "--lang=en-US"]

_REPORT: list[str] = []


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory):
    """Where the session's screenshots go; named in the summary, copied to docs/img/ on request."""
    d = tmp_path_factory.mktemp("screenshots")
    yield d
    shots = sorted(d.glob("*.png"))
    if not shots:
        return
    _REPORT.append(f"browser screenshots: {d} ({', '.join(p.name for p in shots)})")
    if os.environ.get("MLPLAT_UPDATE_SCREENSHOTS") == "1":
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        for p in shots:
            if p.name in README_SHOTS:
                optimize_png(p, DOCS_IMG / p.name)
        _REPORT.append(f"browser screenshots copied to {DOCS_IMG} (MLPLAT_UPDATE_SCREENSHOTS=1)")


def pytest_terminal_summary(terminalreporter):
    for line in _REPORT:
        terminalreporter.write_line(line)


def optimize_png(src: Path, dest: Path) -> None:
    """A small PNG for the README: at most 1200x800, 256 colours (UI screenshots lose nothing
    visible), compressed."""
    from PIL import Image

    img = Image.open(src).convert("RGB")
    img.thumbnail((1200, 800))
    img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(dest, optimize=True)


@pytest.fixture(scope="module")
def chrome():
    """A headless Chromium with a fresh profile and a 1200x800 viewport; quit after the module."""
    reason = browser_unavailable()
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common import selenium_manager

    def no_download(*_a, **_k):
        raise AssertionError("Selenium Manager was called: the tests use the system chromedriver only")

    mp = pytest.MonkeyPatch()
    mp.setattr(selenium_manager.SeleniumManager, "binary_paths", no_download)
    profile = tempfile.mkdtemp(prefix="mlplat-chrome-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium_binary()
    for a in CHROME_ARGS + [f"--user-data-dir={profile}", f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}"]:
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    try:
        # --window-size is the window; make the page itself 1200x800.
        w, h = driver.execute_script("return [window.outerWidth - window.innerWidth, "
                                     "window.outerHeight - window.innerHeight]")
        driver.set_window_size(VIEWPORT[0] + w, VIEWPORT[1] + h)
        yield driver
    finally:
        driver.quit()
        mp.undo()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def jupyterlab(lab, tmp_path_factory):
    """`mlplat notebook --params <the lab's> --port <free>` on a copy of notebooks/ (JupyterLab
    saves into the folder it serves: the repository's notebooks stay clean), with its own settings,
    workspace and runtime folders; stopped after the module. (Needs no browser: the tests of its
    address and token run without one.)"""
    home = tmp_path_factory.mktemp("jupyterlab")
    nb_dir = home / "notebooks"
    shutil.copytree(ROOT / "notebooks", nb_dir)
    settings = home / "settings"
    # No "get Jupyter news?" prompt and no update check: nothing to answer, nothing to fetch.
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        '{"fetchNews": "false", "checkForUpdates": false}')
    # Kernel IPC socket paths must stay under the 108-byte limit: a short runtime folder.
    runtime = Path(tempfile.mkdtemp(prefix="mlplat-jr-"))
    port = free_port()
    env = dict(os.environ, JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(home / "ws"),
               JUPYTER_RUNTIME_DIR=str(runtime))
    for k in ("JUPYTER_TOKEN", "MLPLAT_PARAMS", "MLPLAT_RUN_DIR", "MLPLAT_PROGRESS"):
        env.pop(k, None)
    log = home / "jupyterlab.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mlplat.cli", "notebook", "--params", str(lab.params),
                                 "--port", str(port), "--notebook-dir", str(nb_dir)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=home, start_new_session=True)
    try:
        url = _wait_ready(proc, log, port)
        token = re.search(r"token=([0-9a-f]+)", url).group(1)
        yield JupyterLab(proc, url, port, token, nb_dir, log, Path(lab.params))
    finally:
        _stop(proc)
        shutil.rmtree(runtime, ignore_errors=True)


def _wait_ready(proc: subprocess.Popen, log: Path, port: int, timeout: float = 120.0) -> str:
    deadline = time.monotonic() + timeout
    url = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"mlplat notebook exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        text = log.read_text(errors="replace")
        m = re.search(r"^JupyterLab: (http://\S+)$", text, flags=re.M)
        if m:
            url = m.group(1)
            token = re.search(r"token=([0-9a-f]+)", url).group(1)
            status, _ = http_status(f"http://127.0.0.1:{port}/api/status", {"Authorization": f"token {token}"}) \
                if _listening(port) else (0, {})
            if status == 200:
                return url
        time.sleep(0.5)
    raise AssertionError(f"JupyterLab not ready within {timeout:.0f} s (url: {url}):\n{log.read_text()[-3000:]}")


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _stop(proc: subprocess.Popen) -> None:
    """Stop JupyterLab and its kernels (its own session: the group is ours alone)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    try:  # kernels it started, left in the group when the server went first
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
