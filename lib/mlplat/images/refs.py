"""Container image references: parsing, normalizing, and finding them in text.

The grammar is the one container registries and kubelets use (distribution/reference): an
optional registry (a first component holding a ``.`` or a ``:port``, or ``localhost``), a path of
lower-case components, an optional ``:tag`` and an optional ``@algorithm:hex`` digest. A reference
without a registry means Docker Hub, and a one-component Docker Hub path means ``library/NAME``
(``busybox:1.28`` is ``docker.io/library/busybox:1.28``), which is the name containerd stores and
``ctr -n k8s.io images ls -q`` prints.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DOCKER_HUB = "docker.io"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?)"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

REFERENCE = re.compile(
    rf"^(?P<name>(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_COMPONENT}(?:/{_COMPONENT})*))"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$")

# A candidate inside free text: a run of the characters references are made of, not glued to a
# neighbouring path, URL or word (so `https://host/a/b:1` and `/usr/lib/x:y` never start one).
_CANDIDATE = re.compile(r"(?<![\w.:/@$%{-])[A-Za-z0-9][\w.:/@+-]*[\w]")
# An ``image``-like key followed by a value inside embedded YAML or JSON text:
# ``image: busybox:1.28``, ``"image": "x/y:1"``, ``"defaultJobImage" : "kserve/a:v1"``.
_KEYED = re.compile(r"""["']?(?P<key>[A-Za-z_][\w.-]*)["']?[ \t]*:[ \t]*["']?(?P<value>[A-Za-z0-9][\w.:/@+-]*[\w])""")
IMAGE_KEY = re.compile(r"(^image$|[a-z0-9_-]image$|Image$|_IMAGE$|^IMAGE$)")


class NotAReference(ValueError):
    """The string is not a container image reference."""


@dataclass(frozen=True, order=True)
class ImageRef:
    """One parsed image reference. ``original`` is the string as written in the manifests."""

    registry: str
    repository: str
    tag: str | None
    digest: str | None
    original: str

    @property
    def name(self) -> str:
        """``registry/repository``: the fully qualified name, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def full(self) -> str:
        """The fully qualified reference (what containerd stores): ``docker.io/library/busybox:1.28``;
        no tag and no digest means ``:latest``."""
        s = self.name
        if self.tag or not self.digest:
            s += f":{self.tag or 'latest'}"
        if self.digest:
            s += f"@{self.digest}"
        return s

    @property
    def written_name(self) -> str:
        """The name part as written (``busybox``, ``kserve/agent``): what kustomize ``images:`` matches."""
        return REFERENCE.match(self.original).group("name")  # type: ignore[union-attr]

    @property
    def floating(self) -> bool:
        """No digest and a tag that moves (none, or ``latest``): kubelet pulls it by default."""
        return not self.digest and self.tag in (None, "latest")

    def with_registry(self, registry: str, *, keep_source_registry: bool = True) -> "ImageRef":
        """The same image under another registry. With ``keep_source_registry`` the source registry
        becomes the first path component (``mirror:5000/ghcr.io/kubeflow/x``), so two registries'
        images of the same path never collide in the mirror."""
        repo = f"{self.registry}/{self.repository}" if keep_source_registry else self.repository
        s = f"{registry}/{repo}" + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")
        return parse(s)

    def __str__(self) -> str:
        return self.original


def parse(text: str) -> ImageRef:
    """Parse one reference; raise :class:`NotAReference` when it is not one."""
    s = text.strip()
    m = REFERENCE.match(s)
    if not m or len(s) > 512:
        raise NotAReference(f"{text!r} is not an image reference")
    domain, path = m.group("domain"), m.group("path")
    if domain is not None and not ("." in domain or ":" in domain or domain == "localhost"):
        # `kubeflow/notebook` : the first component is a Docker Hub namespace, not a registry
        path, domain = f"{domain}/{path}", None
        if not re.fullmatch(_COMPONENT, path.split("/", 1)[0]):
            raise NotAReference(f"{text!r}: repository names are lower case")
    if domain is not None and domain.lower() != domain:
        raise NotAReference(f"{text!r}: registry names are lower case")
    registry = domain or DOCKER_HUB
    if registry in ("index.docker.io", "registry-1.docker.io"):
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    return ImageRef(registry, path, m.group("tag"), m.group("digest"), s)


def try_parse(text: str) -> ImageRef | None:
    try:
        return parse(text)
    except NotAReference:
        return None


def normalize(text: str) -> str:
    """The fully qualified form of a reference (``busybox:1.28`` -> ``docker.io/library/busybox:1.28``)."""
    return parse(text).full


def is_template(value: str) -> bool:
    """A value filled in later (Go template, shell or kustomize variable), not an image yet."""
    return any(t in value for t in ("{{", "}}", "$(", "${")) or value.startswith("$")


def looks_pinned(ref: ImageRef) -> bool:
    return bool(ref.tag or ref.digest)


def find_in_text(text: str) -> list[tuple[int, int, ImageRef]]:
    """Image references in free text (args, env values, ConfigMap data, annotations), as
    ``(start, end, ref)``, in order and without overlaps.

    Two ways in, both careful to keep words, URLs, paths, ``host:port`` and label keys out:

    - a token with a path (``org/name`` or ``registry/path``) *and* a tag or digest:
      ``ghcr.io/kubeflow/katib/suggestion-optuna:v0.19.0``, ``kserve/agent:v0.16.0``;
    - after an ``image``-like key in embedded YAML/JSON, also a bare ``name:tag``
      (``image: busybox:1.28``), which elsewhere would be indistinguishable from ``key:value``.
    """
    found: dict[int, tuple[int, int, ImageRef]] = {}
    for m in _KEYED.finditer(text):
        if not IMAGE_KEY.search(m.group("key")):
            continue
        value = m.group("value").rstrip(".-_:")
        ref = try_parse(value)
        if ref is None or not (ref.tag or ref.digest or "/" in value):
            continue
        found[m.start("value")] = (m.start("value"), m.start("value") + len(value), ref)
    for m in _CANDIDATE.finditer(text):
        tok = m.group(0).rstrip(".-_:")
        start = m.start()
        if start in found:
            continue
        if "/" not in tok or not (":" in tok.rsplit("/", 1)[1] or "@" in tok):
            continue
        if tok.startswith(("sha256:", "http:", "https:")) or "://" in tok:
            continue
        ref = try_parse(tok)
        if ref is None or not (ref.tag or ref.digest):
            continue
        if _label_like(ref):
            continue
        found[start] = (start, start + len(tok), ref)
    out = sorted(found.values())
    # drop overlaps (keep the first, longest)
    clean: list[tuple[int, int, ImageRef]] = []
    for item in out:
        if clean and item[0] < clean[-1][1]:
            continue
        clean.append(item)
    return clean


def _label_like(ref: ImageRef) -> bool:
    """``app.kubernetes.io/name:foo`` is a label written as key:value, not an image: a Kubernetes
    label domain with a one-component path."""
    return ref.registry.endswith(("kubernetes.io", "k8s.io", "kubeflow.org", "istio.io", "knative.dev")) \
        and "/" not in ref.repository and ref.registry not in ("registry.k8s.io", "gcr.io", "k8s.gcr.io")
