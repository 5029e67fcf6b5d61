"""Phase 50, kubeflow: not built yet (issue 6). In both modes it lists the steps it
will run, each marked `skipped`, so a run says plainly what it did not do."""

from __future__ import annotations

from . import common

NUMBER, NAME = "50", "kubeflow"
STEPS: list[tuple[str, str, str]] = [
    ('manifests | source', 'take the manifests from a git ref or the offline bundle', 'issue 6'),
    ('manifests | remote bases', 'resolve every remote base from the offline kit', 'issue 6'),
    ('images | inventory and mirror plan', 'list every image and plan the mirror or per-node import', 'issue 6'),
    ('manifests | pull policy', 'rewrite imagePullPolicy Always to IfNotPresent with a kustomize patch', 'issue 6'),
    ('kubeflow | apply', 'apply CRDs and namespaces first, then the rest, with bounded retries', 'issue 6'),
    ('verify | deployments', 'every Deployment and StatefulSet available', 'issue 6'),
]


setup, plan, finish = common.skeleton(NUMBER, NAME, STEPS)
