"""The image inventory of built manifests: every image a cluster would pull, and where it is named.

Kubeflow names images in many places besides a Deployment's containers: init containers, pod
templates nested in custom resources (ClusterTrainingRuntimes, ClusterServingRuntimes, Katib trial
templates), environment variables (``TENSORBOARD_IMAGE``), controller arguments, ConfigMaps that
hold YAML or JSON (katib-config, inferenceservice-config, the Jupyter spawner config, knative's
``queue-sidecar-image``), and Istio's injector values, where the sidecar image is composed from
``global.hub``, ``global.proxy.image`` and ``global.tag``. :func:`scan` looks in all of them:

- ``container``: ``image`` of any item of a ``containers``, ``initContainers`` or
  ``ephemeralContainers`` list, at any depth (with its ``imagePullPolicy``);
- ``field``: any other string field whose key names an image (``image``, ``*Image``, ``*_IMAGE``,
  ``*-image``), when the value is a reference with a tag, digest or path;
- ``text``: image references inside any other string (see :func:`mlplat.images.refs.find_in_text`);
- ``composed``: Istio sidecar and init images composed from injector values.

CRD schemas are skipped (their ``image`` keys are property definitions and their descriptions are
prose); so are values that are still templates (``{{ .ProxyImage }}``, ``$VOLUME_VIEWER_IMAGE``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Iterator

import yaml

from .refs import IMAGE_KEY, ImageRef, find_in_text, is_template, try_parse

CONTAINER_LISTS = ("containers", "initContainers", "ephemeralContainers")
SOURCES = ("container", "field", "text", "composed")


@dataclass
class ImageUse:
    """One place an image is named."""

    image: str  # as written
    full: str  # fully qualified (docker.io/library/busybox:1.28)
    kind: str
    namespace: str
    name: str
    path: list  # keys and list indexes from the object root to the string holding it
    source: str  # container | field | text | composed
    container_list: str = ""  # containers | initContainers | ephemeralContainers
    pull_policy: str | None = None  # containers only: the imagePullPolicy as written (None: unset)
    span: tuple[int, int] | None = None  # text: where in the string
    detail: str = ""

    @property
    def object(self) -> str:
        return f"{self.kind} {self.namespace + '/' if self.namespace else ''}{self.name}"

    @property
    def where(self) -> str:
        return f"{self.object} {pointer(self.path)}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["path"] = pointer(self.path)
        return d


def pointer(path: Iterable) -> str:
    """A JSON pointer (RFC 6901) for a path of keys and indexes."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


@dataclass
class Inventory:
    """Every image use in a set of objects; ``images`` is the sorted set of references as written."""

    uses: list[ImageUse] = field(default_factory=list)

    @property
    def images(self) -> list[str]:
        return sorted({u.image for u in self.uses})

    @property
    def refs(self) -> dict[str, ImageRef]:
        """Fully qualified reference -> parsed reference (one per distinct image)."""
        out: dict[str, ImageRef] = {}
        for u in self.uses:
            if u.full not in out:
                out[u.full] = try_parse(u.image)  # type: ignore[assignment]
        return dict(sorted(out.items()))

    @property
    def full(self) -> list[str]:
        return sorted({u.full for u in self.uses})

    def by_image(self) -> dict[str, list[ImageUse]]:
        out: dict[str, list[ImageUse]] = {}
        for u in self.uses:
            out.setdefault(u.full, []).append(u)
        return dict(sorted(out.items()))

    def registries(self) -> dict[str, int]:
        """Registry -> number of distinct images from it."""
        out: dict[str, int] = {}
        for r in self.refs.values():
            out[r.registry] = out.get(r.registry, 0) + 1
        return dict(sorted(out.items()))

    def rows(self) -> list[dict]:
        """One row per distinct image: registry, where it is named, how (container, text...)."""
        rows = []
        for full, uses in self.by_image().items():
            ref = try_parse(uses[0].image)
            objs = sorted({u.object for u in uses})
            rows.append({
                "image": full, "registry": ref.registry if ref else "?",
                "pinned": "digest" if ref and ref.digest else ("tag" if ref and ref.tag and ref.tag != "latest" else "floating"),
                "sources": ",".join(s for s in SOURCES if any(u.source == s for u in uses)),
                "uses": len(uses), "objects": len(objs),
                "where": objs[0] + (f" (+{len(objs) - 1} more)" if len(objs) > 1 else ""),
            })
        return rows

    def table(self, title: str = "Image inventory"):
        import pandas as pd

        from ..report import Table

        return Table(pd.DataFrame(self.rows()), title, status_col=None)


def scan(objs: Iterable[dict]) -> Inventory:
    """The inventory of every image named in ``objs`` (Kubernetes objects as dicts)."""
    inv = Inventory()
    for obj in objs:
        inv.uses.extend(scan_object(obj))
    return inv


def scan_object(obj: dict) -> list[ImageUse]:
    md = obj.get("metadata") or {}
    ctx = (obj.get("kind") or "", md.get("namespace") or "", md.get("name") or "")
    uses: list[ImageUse] = []
    skip_schema = obj.get("kind") == "CustomResourceDefinition"
    for path, parent, key, value in _walk(obj, []):
        if skip_schema and _in_crd_schema(path):
            continue
        if not isinstance(value, str) or not value:
            continue
        if key == "image" and isinstance(parent, dict) and _is_container(path):
            if is_template(value):
                continue
            ref = try_parse(value)
            if ref is None:
                continue
            uses.append(ImageUse(value, ref.full, *ctx, path=path, source="container", container_list=path[-3],
                                 pull_policy=parent.get("imagePullPolicy")))
            continue
        if isinstance(key, str) and IMAGE_KEY.search(key) and not is_template(value):
            ref = try_parse(value)
            if ref is not None and (ref.tag or ref.digest or "/" in value):
                uses.append(ImageUse(value, ref.full, *ctx, path=path, source="field"))
                continue
        # env: {name: X_IMAGE, value: ref}: the key is `value`, the name says what it is
        if key == "value" and isinstance(parent, dict) and IMAGE_KEY.search(str(parent.get("name", ""))) \
                and not is_template(value):
            ref = try_parse(value)
            if ref is not None and (ref.tag or ref.digest or "/" in value):
                uses.append(ImageUse(value, ref.full, *ctx, path=path, source="field",
                                     detail=f"env {parent.get('name')}"))
                continue
        for start, end, ref in find_in_text(value):
            uses.append(ImageUse(ref.original, ref.full, *ctx, path=path, source="text", span=(start, end)))
        for img, detail in composed_images(value):
            uses.append(ImageUse(img.original, img.full, *ctx, path=path, source="composed", detail=detail))
    return uses


def _walk(node: Any, path: list) -> Iterator[tuple[list, Any, Any, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            p = path + [k]
            yield p, node, k, v
            if isinstance(v, (dict, list)):
                yield from _walk(v, p)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            p = path + [i]
            yield p, node, i, v
            if isinstance(v, (dict, list)):
                yield from _walk(v, p)


def _is_container(path: list) -> bool:
    return len(path) >= 3 and path[-3] in CONTAINER_LISTS and isinstance(path[-2], int)


def _in_crd_schema(path: list) -> bool:
    return len(path) >= 4 and path[0] == "spec" and path[1] == "versions" and path[3] == "schema"


# -- Istio: images composed from injector values ---------------------------------------------
def composed_images(text: str) -> list[tuple[ImageRef, str]]:
    """Images Istio composes from Helm-style values held as JSON/YAML text: the sidecar proxy
    (``global.hub``/``global.proxy.image``/``global.tag``) and, when set, the init image. The
    injector builds ``{hub}/{image}:{tag}`` unless the image already holds a ``/``."""
    if '"hub"' not in text and "hub:" not in text:
        return []
    try:
        data = json.loads(text)
    except ValueError:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError:
            return []
    if not isinstance(data, dict):
        return []
    g = data.get("global")
    if not isinstance(g, dict) or not g.get("hub") or not g.get("tag"):
        return []
    out = []
    for part in ("proxy", "proxy_init"):
        sub = g.get(part)
        if not isinstance(sub, dict) or not sub.get("image"):
            continue
        img = str(sub["image"])
        variant = f"-{g['variant']}" if g.get("variant") else ""
        s = img if "/" in img else f"{g['hub']}/{img}:{g['tag']}{variant}"
        ref = try_parse(s)
        if ref is not None and not is_template(s):
            out.append((ref, f"global.hub + global.{part}.image + global.tag"))
    return out


# -- pull policy ------------------------------------------------------------------------------
def pull_policy_findings(objs: Iterable[dict]) -> list[dict]:
    """Containers that would pull on every start: ``imagePullPolicy: Always`` as written, or no
    policy with a floating tag (none or ``latest``, where Kubernetes defaults to Always); also
    ``imagePullPolicy: Always`` written inside text (templates held in ConfigMaps).
    Each finding: object, path (JSON pointer of the container, or of the string), why."""
    out: list[dict] = []
    for obj in objs:
        md = obj.get("metadata") or {}
        ident = {"kind": obj.get("kind"), "namespace": md.get("namespace") or "", "name": md.get("name")}
        skip_schema = obj.get("kind") == "CustomResourceDefinition"
        for path, parent, key, value in _walk(obj, []):
            if skip_schema and _in_crd_schema(path):
                continue
            if key == "image" and isinstance(parent, dict) and _is_container(path) and isinstance(value, str):
                pol = parent.get("imagePullPolicy")
                ref = try_parse(value)
                if pol == "Always":
                    out.append({**ident, "path": path[:-1], "why": "imagePullPolicy: Always", "action": "replace",
                                "image": value})
                elif pol is None and ref is not None and ref.floating and not is_template(value):
                    out.append({**ident, "path": path[:-1], "why": f"no imagePullPolicy and a floating tag ({value})",
                                "action": "add", "image": value})
            elif isinstance(value, str) and "Always" in value and key != "imagePullPolicy" and _ALWAYS_TEXT.search(value):
                out.append({**ident, "path": path, "why": "imagePullPolicy: Always inside text", "action": "text",
                            "image": ""})
    return out


import re as _re

_ALWAYS_TEXT = _re.compile(r"""["']?imagePullPolicy["']?\s*:\s*["']?Always\b""")


def replace_always_in_text(text: str) -> str:
    """``imagePullPolicy: Always`` -> ``IfNotPresent`` inside a string (YAML or JSON text)."""
    return _ALWAYS_TEXT.sub(lambda m: m.group(0)[: -len("Always")] + "IfNotPresent", text)
