"""Which kubeconfig a site uses, and the connection to its cluster.

- ``kubernetes.existing_kubeconfig`` set: that file (an existing cluster; kubeadm is not used).
- else the admin kubeconfig phase 30 fetched from the first control plane, kept at
  ``~/.kube/mlplat-<site>.conf`` (mode 0600; never under ``outputs/``, it holds credentials).
  ``$MLPLAT_KUBECONFIG_DIR`` moves that folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..kube import Kube, client_from
from ..params.schema import Params

DIR_ENV = "MLPLAT_KUBECONFIG_DIR"


def existing(params: Params) -> bool:
    """True when the site brings its own cluster (kubeadm is not run)."""
    return bool(params.kubernetes.existing_kubeconfig)


def site_kubeconfig(params: Params) -> Path:
    """The kubeconfig of this site's cluster (see the module text); it may not exist yet."""
    if params.kubernetes.existing_kubeconfig:
        return Path(os.path.expanduser(params.kubernetes.existing_kubeconfig))
    base = Path(os.environ.get(DIR_ENV) or Path.home() / ".kube")
    return base / f"mlplat-{params.site}.conf"


def connect(params: Params) -> Kube:
    """A :class:`~mlplat.kube.Kube` for the site's cluster. Raises FileNotFoundError (saying which
    phase writes it) when there is no kubeconfig yet."""
    if existing(params):
        return client_from(params)
    path = site_kubeconfig(params)
    if not path.exists():
        raise FileNotFoundError(f"no kubeconfig at {path} yet: 30_kubernetes fetches it after kubeadm init "
                                "(or set kubernetes.existing_kubeconfig to use a cluster you already have)")
    k = params.kubernetes
    return client_from(str(path), k.context, request_timeout=k.request_timeout, field_manager=k.field_manager)


def write(params: Params, text: str) -> tuple[Path, bool]:
    """Store the fetched admin kubeconfig (0600). Returns (path, changed)."""
    path = site_kubeconfig(params)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.exists() and path.read_text() == text:
        return path, False
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.replace(path)
    return path, True
