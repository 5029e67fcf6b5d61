"""JupyterLab as the engineer at the keyboard uses it: `mlplat notebook` started on loopback with a
token, 00_preflight opened in headless Chromium, every cell run from the Run menu with the mlplat
kernel against the lab; the facts table has one row per lab host and the verdict cell says ok.
Also: JupyterLab listens on 127.0.0.1 only and refuses requests without the token.

One JupyterLab for the module (it takes a few seconds to start on two cores).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from browser_helpers import http_status

pytestmark = [pytest.mark.browser, pytest.mark.lab_hosts]

NOTEBOOK = "00_preflight.ipynb"


def _lab_hosts(params: Path) -> list[str]:
    return [h["name"] for h in yaml.safe_load(params.read_text())["hosts"]]


# -- the server ------------------------------------------------------------------------------------

def _listen_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on `port` (this network namespace)."""
    found = set()
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            addr, p = f[1].split(":")
            if f[3] != "0A" or int(p, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(addr)
            if v6:
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                found.add(socket.inet_ntop(socket.AF_INET6, words))
            else:
                found.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
    return found


def _local_addresses() -> set[str]:
    """Every address of this machine (ip -o addr), loopback included."""
    try:
        out = subprocess.run(["ip", "-o", "addr", "show"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return set()
    return {f[3].split("/")[0] for f in (line.split() for line in out.splitlines()) if len(f) > 3}


def _refused(addr: str, port: int) -> bool:
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        return s.connect_ex((addr, port)) != 0


def test_listens_on_loopback_only(jupyterlab):
    assert _listen_addresses(jupyterlab.port) == {"127.0.0.1"}
    others = (_local_addresses() | {"127.0.0.2", "::1"}) - {"127.0.0.1"}
    reachable = [a for a in sorted(others) if not _refused(a, jupyterlab.port)]
    assert not reachable, f"JupyterLab answers on {reachable}"


def test_refuses_requests_without_the_token(jupyterlab):
    api = jupyterlab.base("api/contents")
    assert http_status(api)[0] == 403
    assert http_status(api, {"Authorization": "token not-the-token"})[0] == 403
    status, headers = http_status(jupyterlab.base("lab"))
    assert status == 302 and "/login" in headers.get("Location", ""), (status, headers)
    assert http_status(api, {"Authorization": f"token {jupyterlab.token}"})[0] == 200
    # The token is not on the command line, where `ps` shows it to every local user.
    cmdline = Path(f"/proc/{jupyterlab.proc.pid}/cmdline").read_bytes().decode(errors="replace")
    assert jupyterlab.token not in cmdline


def test_mlplat_kernel_only(jupyterlab):
    import urllib.request

    req = urllib.request.Request(jupyterlab.base("api/kernelspecs"),
                                 headers={"Authorization": f"token {jupyterlab.token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        specs = json.load(r)
    assert specs["default"] == "mlplat" and set(specs["kernelspecs"]) == {"mlplat"}
    argv = specs["kernelspecs"]["mlplat"]["spec"]["argv"]
    assert argv[0] == sys.executable and "--ext=mlplat.notebook" in argv
    text = jupyterlab.log.read_text()
    assert f"params: {jupyterlab.params.resolve()}" in text
    assert jupyterlab.url.startswith(f"http://127.0.0.1:{jupyterlab.port}/lab?token=")


# -- the notebook in the browser -------------------------------------------------------------------

def _wait(driver, cond, timeout: float, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.25).until(lambda d: cond(d))
    except Exception as e:
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}") from e


def _status_bar(driver) -> str:
    from selenium.webdriver.common.by import By

    return " ".join(e.text for e in driver.find_elements(By.CSS_SELECTOR, ".jp-StatusBar-Item"))


def _menu(driver, menu: str, command: str) -> None:
    """Click a main-menu entry, as a person does: the menu, then the item."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.XPATH, f"//div[contains(@class,'lm-MenuBar-itemLabel') and text()='{menu}']").click()
    item = _wait(driver, lambda d: [e for e in d.find_elements(By.CSS_SELECTOR, f"li.lm-Menu-item[data-command='{command}']")
                                    if e.is_displayed()], 10, f"menu item {command}")
    item[0].click()


def _output_with_heading(driver, heading: str):
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.XPATH, f"//div[contains(@class,'jp-OutputArea-output')][.//h4[starts-with(normalize-space(), '{heading}')]]")
    return found[0] if found else None


def test_preflight_runs_in_the_browser(jupyterlab, chrome, screenshots):
    from selenium.webdriver.common.by import By

    hosts = _lab_hosts(jupyterlab.params)
    t0 = time.monotonic()
    chrome.get(jupyterlab.open_url(f"lab/tree/{NOTEBOOK}"))
    _wait(chrome, lambda d: "mlplat" in _status_bar(d) and "Idle" in _status_bar(d), 120,
          "the notebook open with the mlplat kernel idle")
    _menu(chrome, "Run", "runmenu:run-all")

    def finished(d):
        text = d.find_element(By.CSS_SELECTOR, ".jp-Notebook").text
        return "verdict: ok" in text or "Traceback" in text or "Error" in text or "FAILED" in text

    _wait(chrome, finished, 180, "every cell to run")
    _wait(chrome, lambda d: "Idle" in _status_bar(d), 60, "the kernel to be idle again")
    page = chrome.find_element(By.CSS_SELECTOR, ".jp-Notebook").text
    assert "Traceback" not in page and "Error displaying widget" not in page, page[-3000:]

    facts = _output_with_heading(chrome, "Host facts")
    assert facts is not None, "no facts table"
    rows = facts.find_elements(By.CSS_SELECTOR, "table tbody tr")
    cells = [[td.text for td in r.find_elements(By.CSS_SELECTOR, "td")] for r in rows]
    assert sorted(c[0] for c in cells) == sorted(hosts), cells  # one row per lab host
    assert all(c[1] == "ok" for c in cells), cells
    verdict = _output_with_heading(chrome, "Verdict 00 preflight")
    assert verdict is not None and "Verdict 00 preflight: ok" in verdict.text
    assert "verdict: ok" in page
    # Long waits show a progress widget in the Lab (the host fan-outs); never an error in its place.
    bars = chrome.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output .widget-hprogress, "
                                                 ".jp-OutputArea-output .jupyter-widget-hprogress")
    assert bars, "no progress widget"

    # The screenshot for the README: file browser folded away, the facts step at the top.
    current = chrome.find_elements(By.CSS_SELECTOR, ".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current")
    if current:
        current[0].click()
    heading = chrome.find_element(By.XPATH, "//div[contains(@class,'jp-MarkdownOutput')]//h2[starts-with(normalize-space(), '3. Facts')]")
    chrome.execute_script("arguments[0].scrollIntoView({block: 'start'});"
                          "const s = arguments[0].closest('.jp-WindowedPanel-outer');"
                          "if (s) { s.scrollTop -= 12; }", heading)
    time.sleep(1.0)  # let the notebook settle after scrolling (windowed rendering)
    shot = screenshots / "jupyterlab-00_preflight.png"
    chrome.save_screenshot(str(shot))
    print(f"screenshot: {shot} (run took {time.monotonic() - t0:.0f} s)")

    # Saved as a person saves it: the file holds the outputs, the mlplat kernel and the widget
    # views (models live in the kernel; JupyterLab saves their state only when asked to).
    nb_path = jupyterlab.notebook_dir / NOTEBOOK
    before = nb_path.stat().st_mtime
    _menu(chrome, "File", "docmanager:save")
    _wait(chrome, lambda d: nb_path.stat().st_mtime > before, 30, "the notebook to be saved")
    nb = json.loads(nb_path.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "mlplat"
    outs = [o for c in nb["cells"] if c["cell_type"] == "code" and "phase.facts()" in "".join(c["source"])
            for o in c["outputs"]]
    views = [o["data"]["application/vnd.jupyter.widget-view+json"] for o in outs
             if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert views and views[0].get("model_id"), outs
    html = next(o["data"]["text/html"] for o in outs if "text/html" in o.get("data", {}))
    html = "".join(html) if isinstance(html, list) else html
    assert all(f">{h}<" in html for h in hosts)
