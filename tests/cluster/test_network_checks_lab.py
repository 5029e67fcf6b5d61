"""Phase 30's network checks driven against the session's lab API server (real apiserver,
controllers and scheduler; KWOK nodes).

On KWOK the checks are skipped (test_phases_lab). Here the phase is told the nodes are real, so
its whole orchestration runs against a real API server: a namespace and pods created with
server-side apply, waits, a Service, the cleanup. Nothing runs in KWOK pods, so every check must
fail, each clearly, with its hint, and leave nothing behind. (That they pass on real nodes is for
the real-node lab to show.)
"""

from __future__ import annotations

import time

import pytest

from mlplat.cluster import netcheck, nodes
from mlplat.phases import kubernetes as p30

pytestmark = [pytest.mark.lab_cluster, pytest.mark.slow]


def test_checks_run_fail_clearly_and_clean_up_on_nodes_that_run_nothing(lab_site, kube, monkeypatch):
    monkeypatch.setattr(nodes, "simulated", lambda params: False)
    monkeypatch.setattr(p30, "_timeout", lambda ctx: 8.0)
    p30.setup(params_file=str(lab_site.params_path), mode="apply")
    p30.network()
    rows = {(r.step, r.host): r for r in p30._ctx().phase.steps["network"]}
    runtime = [r for (s, _), r in rows.items() if s == "verify | node runtime"]
    assert len(runtime) == len(lab_site.hosts)
    assert all(not r.ok and "not containerd" in r.message and r.hint for r in runtime)
    [coredns] = [r for (s, _), r in rows.items() if s == "verify | CoreDNS"]
    assert not coredns.ok and "CoreDNS not ready" in coredns.message and coredns.hint
    [dns] = [r for (s, _), r in rows.items() if s == "verify | DNS lookup"]
    [svc] = [r for (s, _), r in rows.items() if s == "verify | Service across nodes"]
    assert not dns.ok and dns.message.startswith("DNS lookup not run: pod on") and "not done after 8 s" in dns.message and "did not finish" in dns.hint
    assert not svc.ok and svc.message.startswith("Service check not run: the client pod on")
    assert dns.hint and svc.hint
    # Everything it created goes: the namespace (with the pods and the Service) is deleted.
    res = kube.resource("Namespace", "v1")
    deadline = time.monotonic() + 90
    left = None
    while time.monotonic() < deadline:
        left = [n["metadata"]["name"] for n in kube.list(res) if n["metadata"]["name"].startswith(netcheck.NS_PREFIX)]
        if not left:
            break
        time.sleep(2)
    assert not left, f"left behind: {left}"
