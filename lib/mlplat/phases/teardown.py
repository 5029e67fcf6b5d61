"""Phase 99, teardown: not built yet (issue 5). In both modes it lists the steps it
will run, each marked `skipped`, so a run says plainly what it did not do."""

from __future__ import annotations

from . import common

NUMBER, NAME = "99", "teardown"
STEPS: list[tuple[str, str, str]] = [
    ('guard | confirm', 'refuse unless confirm is true', 'issue 5'),
    ('kubeadm | reset', 'kubeadm reset on every node', 'issue 5'),
    ('network | CNI and iptables state', "remove CNI config and flush the cluster's iptables chains", 'issue 5'),
    ('kubeconfig | remove', 'remove the fetched kubeconfig', 'issue 5'),
    ('packages | remove', 'remove the Kubernetes packages when asked', 'issue 5'),
]


setup, plan, finish = common.skeleton(NUMBER, NAME, STEPS)
