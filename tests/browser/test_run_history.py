"""The run history page, opened from disk in headless Chromium after real runs against the lab:
`outputs/index.html` lists the runs newest first with their status, and the phase link opens the
rendered notebook.

Two runs of 00_preflight: one failing (the params name one more host, where nothing answers) and
then one ok, so the page shows both colours and the failed phase's cell and hint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.browser, pytest.mark.lab_hosts, pytest.mark.notebooks]


def _mlplat(args, outputs: Path, timeout=300):
    env = dict(os.environ, MLPLAT_OUTPUTS=str(outputs))
    for k in ("MLPLAT_PARAMS", "MLPLAT_RUN_DIR", "MLPLAT_PROGRESS", "MLPLAT_PROGRESS_DELAY"):
        env.pop(k, None)
    return subprocess.run([sys.executable, "-m", "mlplat.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def _run_id(stdout: str) -> str:
    line = next(ln for ln in stdout.splitlines() if ln.startswith("run "))
    return line.split()[1].rstrip(":")


@pytest.fixture(scope="module")
def runs(lab, tmp_path_factory):
    """(outputs folder, failed run id, ok run id), made by `mlplat run` in that order."""
    base = tmp_path_factory.mktemp("history")
    outputs = base / "outputs"
    data = yaml.safe_load(Path(lab.params).read_text())
    last = data["hosts"][-1]["address"].rsplit(".", 1)
    # A host the params expect that is not there: nothing listens at that address.
    data["hosts"].append({"name": "lab-missing", "address": f"{last[0]}.250", "roles": ["worker"], "gpus": 0})
    bad = base / "missing-host.yaml"
    bad.write_text(yaml.safe_dump(data, sort_keys=False))
    r = _mlplat(["run", "--params", str(bad), "--only", "00", "--quiet"], outputs)
    assert r.returncode == 1, r.stdout + r.stderr
    failed_id = _run_id(r.stdout)
    time.sleep(1.1)  # run ids and start times have one-second resolution
    r = _mlplat(["run", "--params", str(lab.params), "--only", "00", "--quiet"], outputs)
    assert r.returncode == 0, r.stdout + r.stderr
    return outputs, failed_id, _run_id(r.stdout)


def test_every_run_writes_the_page(runs):
    outputs, failed_id, ok_id = runs
    page = (outputs / "index.html").read_text()
    assert page.index(ok_id) < page.index(failed_id)  # newest first
    before = (outputs / "index.html").stat().st_mtime_ns
    r = _mlplat(["runs", "--html"], outputs)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"run history: {(outputs / 'index.html').resolve().as_uri()}"
    assert (outputs / "index.html").stat().st_mtime_ns >= before


def test_history_page_in_the_browser(runs, lab, chrome, screenshots):
    from selenium.webdriver.common.by import By

    outputs, failed_id, ok_id = runs
    chrome.get((outputs / "index.html").resolve().as_uri())
    rows = chrome.find_elements(By.CSS_SELECTOR, "tr.run")
    assert [r.get_attribute("data-run") for r in rows] == [ok_id, failed_id]
    ok_row, bad_row = rows
    assert ok_row.find_element(By.CSS_SELECTOR, "td.status").text == "ok"
    assert ok_row.find_element(By.CSS_SELECTOR, "td.mode").text == "plan"
    assert ok_row.find_element(By.CSS_SELECTOR, "td.params").text.endswith("params.yaml")
    assert bad_row.find_element(By.CSS_SELECTOR, "td.status").text == "failed"
    badge = bad_row.find_element(By.CSS_SELECTOR, "[data-phase='00_preflight']")
    assert badge.get_attribute("data-status") == "failed"
    assert "lab-missing" in bad_row.find_element(By.CSS_SELECTOR, "div.fail").text
    # coloured: the status cell's background differs between ok and failed
    colour = lambda row: row.find_element(By.CSS_SELECTOR, "span.status").value_of_css_property("background-color")  # noqa: E731
    assert colour(ok_row) != colour(bad_row)

    shot = screenshots / "run-history.png"
    chrome.save_screenshot(str(shot))
    print(f"screenshot: {shot}")

    # The verdict link points at a file that exists, and holds the verdict.
    verdict = ok_row.find_element(By.CSS_SELECTOR, "a.verdict").get_attribute("href")
    assert json.loads(Path(verdict.removeprefix("file://")).read_text())["ok"] is True
    # The phase link opens the rendered notebook, with the facts table the run produced.
    ok_row.find_element(By.CSS_SELECTOR, "a.phase[data-phase='00_preflight']").click()
    assert chrome.current_url.endswith(f"/{ok_id}/00_preflight.html"), chrome.current_url
    body = chrome.find_element(By.TAG_NAME, "body").text
    assert "Host facts" in body and "verdict: ok" in body
    for h in yaml.safe_load(Path(lab.params).read_text())["hosts"]:
        assert h["name"] in body
    assert "Error displaying widget" not in body
    chrome.save_screenshot(str(screenshots / "rendered-00_preflight.png"))
    chrome.back()
    assert chrome.current_url.endswith("/index.html")
