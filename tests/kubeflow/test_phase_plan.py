"""Phase 50's steps in plan mode without a cluster: the git source is planned, never fetched; a
missing bundle fails with what to fix; Istio ownership reads the bundle's versions."""

from __future__ import annotations

import pytest
import yaml


def _params(path, **kubeflow):
    path.write_text(yaml.safe_dump({
        "site": "kf-plan", "hosts": [{"name": "node-1", "address": "192.0.2.10", "roles": ["control-plane", "worker"]}],
        "kubeflow": kubeflow}, sort_keys=False))
    return path


def _steps(params):
    from mlplat.phases import common
    from mlplat.phases import kubeflow as phase

    phase.setup(params_file=str(params), mode="plan")
    for s in ("manifests_source", "remote_bases", "build", "images", "mirror_plan", "pull_policy", "pull_check",
              "istio", "apply", "verify", "dashboard"):
        getattr(phase, s)()
    return common.context(phase.NUMBER).phase


def test_git_source_is_planned_not_fetched(tmp_path, no_network, monkeypatch):
    monkeypatch.setenv("MLPLAT_CACHE", str(tmp_path / "cache"))
    ph = _steps(_params(tmp_path / "p.yaml", source="git", git_ref="26.03"))
    v = ph.verdict()
    assert v["ok"] and not no_network.attempts
    [src] = ph.steps["source"]
    assert src.skipped and "git clone --depth 1 --branch 26.03 https://github.com/kubeflow/manifests" in src.message
    assert all(r.skipped for k in ("remotes", "build", "mirror", "apply", "verify") for r in ph.steps[k])


def test_missing_bundle_fails_with_the_fix(tmp_path, no_network):
    ph = _steps(_params(tmp_path / "p.yaml", bundle=str(tmp_path / "nowhere")))
    v = ph.verdict()
    assert not v["ok"]
    assert [f["step"] for f in v["failures"]] == ["manifests | source"]
    assert "does not exist" in v["failures"][0]["message"]


@pytest.mark.slow
def test_istio_versions_checked_when_phase40_owns_it(tmp_path, kf_cache, built, monkeypatch, no_network):
    monkeypatch.setenv("MLPLAT_CACHE", str(kf_cache))
    p = _params(tmp_path / "p.yaml", components="training-only", istio_owner="phase40")
    data = yaml.safe_load(p.read_text())
    data["versions"] = {"istio": "1.28.1"}  # not what the bundle ships (a minor mismatch fails validation)
    p.write_text(yaml.safe_dump(data))
    ph = _steps(p)
    rows = {r.step: r for r in ph.steps["istio"]}
    bundle = rows["istio | ownership and versions | bundle"]
    assert bundle.ok and "images are 1.28.0; versions.istio is 1.28.1; only the patch release differs" in bundle.message
    assert any("tag 1.29.0 while its images are 1.28.0" in n for n in ph.notes)
    left = [r for r in ph.steps["build"] if r.skipped]
    assert len(left) == 3 and all("phase 40" in r.message for r in left)
    assert not no_network.attempts
