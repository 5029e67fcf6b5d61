"""Phase 40, istio: not built yet (issue 5). In both modes it lists the steps it
will run, each marked `skipped`, so a run says plainly what it did not do."""

from __future__ import annotations

from . import common

NUMBER, NAME = "40", "istio"
STEPS: list[tuple[str, str, str]] = [
    ('istio | guard', 'refuse an unsupported Istio/Kubernetes pair before applying', 'issue 5'),
    ('istio | install', "apply Kubeflow's bundled Istio (or istioctl install)", 'issue 5'),
    ('istio | addons', 'apply Kiali, Grafana, Prometheus and Jaeger from samples/addons', 'issue 5'),
    ('verify | istiod and injection', 'istiod available and the injector webhook answering', 'issue 5'),
]


setup, plan, finish = common.skeleton(NUMBER, NAME, STEPS)
