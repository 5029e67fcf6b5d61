"""Against an API server that does not answer (a loopback port nobody listens on): the client's
errors are typed temporary, and an apply stops within its bound, saying why, instead of retrying
every object in turn."""

from __future__ import annotations

import socket
import time

import yaml

from mlplat.kube import KubeError, Retry, apply, client_from
from mlplat.report import hint_for


def _dead_kubeconfig(tmp_path) -> str:
    with socket.socket() as s:  # a port that was free a moment ago: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = tmp_path / "kubeconfig"
    p.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "dead",
        "clusters": [{"name": "dead", "cluster": {"server": f"https://127.0.0.1:{port}",
                                                  "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "not-a-secret"}}],
        "contexts": [{"name": "dead", "context": {"cluster": "dead", "user": "u", "namespace": "ns1"}}]}))
    return str(p)


def test_connection_refused_is_a_temporary_error(tmp_path):
    kube = client_from(_dead_kubeconfig(tmp_path), request_timeout=2)
    assert kube.name == "dead" and kube.namespace == "ns1" and kube.request_timeout == 2
    try:
        kube.version()
    except KubeError as e:
        assert e.status == 0 and e.temporary and "connection refused" in str(e)
        assert "API server" in hint_for(str(e)) and "30_kubernetes" in hint_for(str(e))
    else:
        raise AssertionError("expected a KubeError")


def test_apply_to_an_unreachable_server_stops_within_its_bound(tmp_path):
    kube = client_from(_dead_kubeconfig(tmp_path), request_timeout=2)
    objs = [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"c{i}"}} for i in range(6)]
    notes: list[str] = []
    t0 = time.monotonic()
    results = apply(kube, objs, retry=Retry(attempts=4, initial=0.1, max_delay=0.4, deadline=5), workers=1,
                    progress=False, note=notes.append)
    elapsed = time.monotonic() - t0
    assert elapsed < 10, f"{elapsed:.1f} s: one object's retries, not six in turn"
    assert all(not r.ok for r in results)
    assert "gave up after 4 attempt(s)" in results[0].message
    assert all("gave up at once: the API server did not answer" in r.message for r in results[1:])
    assert len(notes) == 3 and all("retrying ConfigMap ns1/c0" in n or "retrying ConfigMap c0" in n for n in notes)
