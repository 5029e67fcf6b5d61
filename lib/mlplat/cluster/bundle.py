"""The offline kit: where it is, and the manifests phases 30 and 40 take from it.

Layout (``shared/fixtures/offline-bundle/`` is one; an operator carries the same into a site)::

    cluster-addons/kube-flannel-v<flannel>.yml
    cluster-addons/nvidia-device-plugin-v<device_plugin>.yml
    istio-<istio>-addons/{kiali,grafana,prometheus,jaeger}.yaml      Istio's samples/addons
    kubeflow-manifests-<kubeflow>.tar.gz                            kubeflow/manifests at the tag

Found at ``kubeflow.bundle`` (the folder, or a file inside it), else ``$MLPLAT_BUNDLE``, else the
shared fixtures (``$MLPLAT_SHARED`` or ``../shared`` beside the repository). Nothing is fetched.
The Kubeflow tarball is unpacked once, by phase 50's code (:mod:`mlplat.kubeflow.source`), into
its cache.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..kube.manifests import kustomize, load_manifests
from ..params.schema import Params
from .kubeadm import node_ip

BUNDLE_ENV = "MLPLAT_BUNDLE"
SHARED_ENV = "MLPLAT_SHARED"


class BundleMissing(FileNotFoundError):
    """The offline kit, or a file in it, is not there; the message says where it looked."""


def _repo_root() -> Path:
    here = Path(__file__).resolve()
    for p in here.parents:
        if (p / "pyproject.toml").exists():
            return p
    return Path.cwd()


def candidates(params: Params | None = None) -> list[Path]:
    out: list[Path] = []
    b = params.kubeflow.bundle if params is not None else None
    if b:
        p = Path(os.path.expanduser(b))
        out.append(p if p.is_dir() or not p.exists() else p.parent)
    if os.environ.get(BUNDLE_ENV):
        out.append(Path(os.environ[BUNDLE_ENV]))
    shared = os.environ.get(SHARED_ENV)
    if shared:
        out.append(Path(shared) / "fixtures" / "offline-bundle")
    out.append(_repo_root().parent / "shared" / "fixtures" / "offline-bundle")
    return out


def bundle_dir(params: Params | None = None) -> Path:
    """The offline kit's folder. Raises :class:`BundleMissing` naming every place it looked."""
    if params is not None and params.kubeflow.bundle:
        p = candidates(params)[0]
        if not p.is_dir():
            raise BundleMissing(f"kubeflow.bundle {params.kubeflow.bundle} is not a folder (nor a file in one): "
                                "point it at the folder holding cluster-addons/ and kubeflow-manifests-<version>.tar.gz")
        return p
    tried = candidates(params)
    for p in tried:
        if p.is_dir():
            return p
    raise BundleMissing("offline bundle not found; looked in " + ", ".join(str(p) for p in tried)
                        + ": set kubeflow.bundle in the params to the folder holding cluster-addons/ and "
                        "kubeflow-manifests-<version>.tar.gz")


def _file(params: Params, rel: str) -> Path:
    d = bundle_dir(params)
    p = d / rel
    if not p.is_file():
        near = sorted(str(x.relative_to(d)) for x in (p.parent.glob("*") if p.parent.is_dir() else []))
        raise BundleMissing(f"{rel} is not in the offline bundle {d}"
                            + (f" (its {p.parent.name}/ holds: {', '.join(near)})" if near else "")
                            + "; add it, or pin the version the bundle carries in params versions")
    return p


def flannel_file(params: Params) -> Path:
    return _file(params, f"cluster-addons/kube-flannel-v{params.versions.flannel.lstrip('v')}.yml")


def device_plugin_file(params: Params) -> Path:
    return _file(params, f"cluster-addons/nvidia-device-plugin-v{params.versions.device_plugin.lstrip('v')}.yml")


def flannel(params: Params) -> list[dict]:
    """flannel's manifest with ``net-conf.json`` Network set to ``kubernetes.pod_cidr`` (flannel
    must hand out addresses from the range kubeadm gave the nodes), and ``--iface=<node IP>`` for
    each host: without it flannel takes the default route's interface, which on servers with several
    NICs is not always the network the nodes announce (the kubelet's node IP). Each flanneld uses the
    first of those addresses that is its own. Args that already choose an interface are kept as they are."""
    objs = load_manifests(flannel_file(params))
    ips = list(dict.fromkeys(ip for ip in (node_ip(h) for h in params.hosts) if ip))
    for o in objs:
        if o.get("kind") == "ConfigMap" and "net-conf.json" in (o.get("data") or {}):
            conf = json.loads(o["data"]["net-conf.json"])
            if conf.get("Network") != params.kubernetes.pod_cidr:
                conf["Network"] = params.kubernetes.pod_cidr
                o["data"]["net-conf.json"] = json.dumps(conf, indent=2) + "\n"
        if o.get("kind") == "DaemonSet":
            for c in o["spec"]["template"]["spec"].get("containers") or []:
                args = c.get("args")
                if args is None or "--kube-subnet-mgr" not in args:
                    continue
                if not any(a.startswith(("--iface", "--public-ip")) for a in args):
                    c["args"] = args + [f"--iface={ip}" for ip in ips]
    return objs


def device_plugin(params: Params) -> list[dict]:
    """NVIDIA's static device-plugin DaemonSet (kube-system), as released."""
    return load_manifests(device_plugin_file(params))


def istio_addons_dir(params: Params) -> Path:
    if params.istio.addons_dir:
        p = Path(os.path.expanduser(params.istio.addons_dir))
        if not p.is_dir():
            raise BundleMissing(f"istio.addons_dir {p} is not a folder")
        return p
    d = bundle_dir(params) / f"istio-{params.versions.istio.lstrip('v')}-addons"
    if not d.is_dir():
        raise BundleMissing(f"{d.name}/ is not in the offline bundle {d.parent}: add Istio "
                            f"{params.versions.istio}'s samples/addons there, or set istio.addons_dir")
    return d


def istio_addon(params: Params, name: str) -> list[dict]:
    p = istio_addons_dir(params) / f"{name}.yaml"
    if not p.is_file():
        raise BundleMissing(f"{p.name} is not in {p.parent}")
    return load_manifests(p)


def kubeflow_manifests(params: Params) -> Path:
    """The unpacked ``kubeflow/manifests`` tree of the offline bundle (the folder holding
    ``common/``). Located and unpacked by phase 50's :func:`mlplat.kubeflow.source.offline`, so
    both phases read the same tree from the same cache; its release must be ``versions.kubeflow``."""
    from ..kubeflow.source import SourceError, offline

    try:
        src = offline(params.kubeflow.bundle)
    except SourceError as e:
        raise BundleMissing(str(e)) from None
    if src.release and src.release != str(params.versions.kubeflow):
        raise BundleMissing(f"the offline bundle holds Kubeflow {src.release}, versions.kubeflow is "
                            f"{params.versions.kubeflow}: use the matching bundle or pin that version")
    if not (src.root / "common").is_dir():
        raise BundleMissing(f"no common/ folder in the Kubeflow manifests at {src.root}")
    return src.root


def build(root: Path, rel: str) -> list[dict]:
    """``kustomize build`` of ``root/rel`` (kustomize from the pinned kubectl), as objects."""
    path = root / rel
    if not path.is_dir():
        raise BundleMissing(f"{rel} is not in the Kubeflow manifests at {root}")
    return load_manifests(kustomize(path))

