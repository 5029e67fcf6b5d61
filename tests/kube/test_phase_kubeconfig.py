"""Which kubeconfig phases 50 and 90 use, without a cluster: like every phase (common.kube), the
file 30_kubernetes fetched (~/.kube/mlplat-<site>.conf, here under $MLPLAT_KUBECONFIG_DIR) when
kubernetes.existing_kubeconfig is unset, never $KUBECONFIG or ~/.kube/config; with no such file,
no connection and the reason naming the path and the phase that writes it."""

from __future__ import annotations

import pytest
import yaml

SITE = "kc-site"
# Nothing listens on port 9 of these addresses: a request fails at once, naming the server.
PHASE30_SERVER = "https://127.0.0.1:9"
DECOY_SERVER = "https://127.0.0.2:9"


def _kubeconfig(path, server: str, name: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": name,
        "clusters": [{"name": name, "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
        "users": [{"name": name, "user": {"token": "not-a-real-token"}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}]}))
    return path


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A params file without kubernetes.existing_kubeconfig, the phase-30 kubeconfig folder in
    tmp_path, and a decoy $KUBECONFIG that no phase may pick up."""
    params = tmp_path / "site.yaml"
    params.write_text(yaml.safe_dump({
        "site": SITE, "hosts": [{"name": "node-1", "address": "192.0.2.10", "roles": ["control-plane", "worker"]}]},
        sort_keys=False))
    kdir = tmp_path / "kube"
    monkeypatch.setenv("MLPLAT_KUBECONFIG_DIR", str(kdir))
    monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path / "decoy.conf", DECOY_SERVER, "decoy")))
    return params, kdir / f"mlplat-{SITE}.conf"


def _kube_of(phase):
    from mlplat.phases import common

    ctx = common.context(phase.NUMBER)
    return ctx, common.kube(ctx)


def test_phase30_kubeconfig_is_what_90_uses(site):
    from mlplat.phases import troubleshoot as p90

    params, conf = site
    _kubeconfig(conf, PHASE30_SERVER, "kubernetes-admin@" + SITE)
    head = p90.setup(params_file=str(params), mode="plan")
    ctx, kube = _kube_of(p90)
    assert kube is not None and kube.kubeconfig == str(conf) and kube.host == PHASE30_SERVER
    row = head.frame.set_index("setting").loc["cluster", "value"]
    assert row == f"kubernetes-admin@{SITE} ({PHASE30_SERVER})"
    # A step reaches for that server (refused: nothing listens), not the decoy's.
    p90.nodes()
    [r] = ctx.phase.steps["nodes | NotReady"]
    assert not r.ok and "cannot read the cluster" in r.message and "127.0.0.1:9" in r.message, r.message
    assert "127.0.0.2" not in r.message


def test_phase30_kubeconfig_is_what_50_uses(site):
    from mlplat.phases import kubeflow as p50

    params, conf = site
    _kubeconfig(conf, PHASE30_SERVER, "kubernetes-admin@" + SITE)
    p50.setup(params_file=str(params), mode="plan")
    ctx, _ = _kube_of(p50)
    kube = p50._kube(ctx)
    assert kube is not None and kube.kubeconfig == str(conf) and kube.host == PHASE30_SERVER
    assert ctx.extra["kube"] is kube
    p50.finish()


@pytest.mark.parametrize("mode", ["plan", "apply"])
def test_90_without_any_kubeconfig_says_where_it_looked(site, mode):
    from mlplat.phases import troubleshoot as p90

    params, conf = site
    head = p90.setup(params_file=str(params), mode=mode)
    ctx, kube = _kube_of(p90)
    assert kube is None
    why = ctx.extra["kube_error"]
    assert f"no kubeconfig at {conf} yet: 30_kubernetes fetches it" in why
    assert head.frame.set_index("setting").loc["cluster", "value"] == f"none: {why}"
    p90.nodes()
    [r] = ctx.phase.steps["nodes | NotReady"]
    assert (r.skipped if mode == "plan" else not r.ok) and why in r.message


def test_50_without_any_kubeconfig_says_where_it_looked(site):
    from mlplat.phases import kubeflow as p50

    params, conf = site
    p50.setup(params_file=str(params), mode="plan")
    ctx, _ = _kube_of(p50)
    assert p50._kube(ctx) is None
    assert f"no kubeconfig at {conf} yet: 30_kubernetes fetches it" in ctx.extra["kube_error"]
