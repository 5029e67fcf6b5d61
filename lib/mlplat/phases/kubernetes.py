"""Phase 30, kubernetes: not built yet (issue 5). In both modes it lists the steps it
will run, each marked `skipped`, so a run says plainly what it did not do."""

from __future__ import annotations

from . import common

NUMBER, NAME = "30", "kubernetes"
STEPS: list[tuple[str, str, str]] = [
    ('packages | kubeadm kubelet kubectl', 'install the pinned packages from pkgs.k8s.io or the mirror', 'issue 5'),
    ('kubeadm | config', 'render the v1beta4 kubeadm config from the params', 'issue 5'),
    ('kubeadm | init', 'init the first control-plane host, or reuse an existing cluster', 'issue 5'),
    ('kubeadm | join', 'join the workers with a fresh token', 'issue 5'),
    ('cni | flannel', 'apply flannel from the params or the offline bundle', 'issue 5'),
    ('gpu | device plugin', 'apply the NVIDIA device plugin', 'issue 5'),
    ('verify | nodes and GPUs', 'all nodes Ready; nvidia.com/gpu allocatable equals the GPUs preflight saw', 'issue 5'),
]


setup, plan, finish = common.skeleton(NUMBER, NAME, STEPS)
