"""Which resources the API server serves: kinds to REST paths, namespaced or not.

Uses aggregated discovery (``apidiscovery.k8s.io/v2``, GA since Kubernetes 1.30): two requests
(``/api`` and ``/apis``) describe every group, version and resource. Older servers get the legacy
walk (one request per group version). The map is refreshed when a kind is not found, since a CRD
applied a moment ago adds kinds; it is never cached on disk.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import quote

if TYPE_CHECKING:
    from .client import Kube

AGGREGATED = ("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,"
              "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json")


@dataclass(frozen=True)
class Resource:
    """A served resource: ``group``/``version``/``plural``, its ``kind`` and scope."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    verbs: tuple[str, ...] = field(default=(), compare=False)
    stale: bool = field(default=False, compare=False)
    short_names: tuple[str, ...] = field(default=(), compare=False)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_resource(self) -> str:
        """``plural.group`` as the API server names it in messages (``deployments.apps``)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def path(self, namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{quote(namespace, safe='')}"
        base += f"/{self.plural}"
        if name:
            base += f"/{quote(name, safe='')}"
            if sub:
                base += f"/{sub}"
        return base


class NoKindMatch(LookupError):
    """The server does not serve this kind (in this version)."""


class Discovery:
    """Resource map of one API server; thread-safe, refreshed on a miss (at most every 0.5 s)."""

    def __init__(self, kube: "Kube"):
        self.kube = kube
        self._lock = threading.Lock()
        self._by_gvk: dict[tuple[str, str, str], Resource] = {}
        self._by_kind: dict[str, list[Resource]] = {}
        self._by_plural: dict[str, list[Resource]] = {}
        self._preferred: dict[str, str] = {}
        self._stale_groups: set[str] = set()
        self._loaded_at = 0.0

    # -- loading -----------------------------------------------------------------------------
    def refresh(self) -> None:
        with self._lock:
            self._load()

    def _ensure(self) -> None:
        if not self._loaded_at:
            with self._lock:
                if not self._loaded_at:
                    self._load()

    def _load(self) -> None:
        entries: list[Resource] = []
        preferred: dict[str, str] = {}
        stale: set[str] = set()
        ok = False
        try:
            core = self.kube.request("GET", "/api", accept=AGGREGATED)
            apis = self.kube.request("GET", "/apis", accept=AGGREGATED)
            if isinstance(apis, dict) and apis.get("kind") == "APIGroupDiscoveryList":
                for doc in (core, apis):
                    for item in doc.get("items") or []:
                        group = (item.get("metadata") or {}).get("name", "")
                        versions = item.get("versions") or []
                        if versions:
                            preferred[group] = versions[0]["version"]
                        for ver in versions:
                            is_stale = ver.get("freshness") == "Stale"
                            if is_stale:
                                stale.add(f"{group}/{ver['version']}" if group else ver["version"])
                            for r in ver.get("resources") or []:
                                rk = r.get("responseKind") or {}
                                entries.append(Resource(
                                    group, ver["version"], r["resource"], rk.get("kind", ""),
                                    r.get("scope") == "Namespaced", tuple(r.get("verbs") or ()), is_stale,
                                    tuple(r.get("shortNames") or ()) + ((r["singularResource"],)
                                                                         if r.get("singularResource") else ())))
                ok = True
        except Exception:  # noqa: BLE001 - fall back to the legacy walk below
            ok = False
        if not ok:
            entries, preferred = self._legacy()
        self._by_gvk = {(r.group, r.version, r.kind): r for r in entries}
        by_kind: dict[str, list[Resource]] = {}
        by_plural: dict[str, list[Resource]] = {}
        for r in entries:
            by_kind.setdefault(r.kind.lower(), []).append(r)
            for n in {r.plural.lower(), *(x.lower() for x in r.short_names)}:
                by_plural.setdefault(n, []).append(r)
        self._by_kind, self._by_plural = by_kind, by_plural
        self._preferred = preferred
        self._stale_groups = stale
        self._loaded_at = time.monotonic()

    def _legacy(self) -> tuple[list[Resource], dict[str, str]]:
        gvs: list[tuple[str, str]] = [("", v) for v in self.kube.request("GET", "/api").get("versions", [])]
        preferred = {"": "v1"}
        for g in self.kube.request("GET", "/apis").get("groups") or []:
            preferred[g["name"]] = (g.get("preferredVersion") or {}).get("version", "")
            gvs += [(g["name"], v["version"]) for v in g.get("versions") or []]

        def fetch(gv):
            group, version = gv
            path = f"/apis/{group}/{version}" if group else f"/api/{version}"
            try:
                doc = self.kube.request("GET", path)
            except Exception:  # noqa: BLE001 - an unavailable aggregated API
                return []
            return [Resource(group, version, r["name"], r["kind"], bool(r.get("namespaced")), tuple(r.get("verbs") or ()),
                             False, tuple(r.get("shortNames") or ()) + ((r["singularName"],) if r.get("singularName") else ()))
                    for r in doc.get("resources") or [] if "/" not in r["name"]]

        with ThreadPoolExecutor(8) as ex:
            entries = [r for rs in ex.map(fetch, gvs) for r in rs]
        return entries, preferred

    # -- lookups -----------------------------------------------------------------------------
    def resolve(self, api_version: str, kind: str, *, refresh: bool = True) -> Resource:
        """The resource for an object's ``apiVersion`` and ``kind``; refreshes once on a miss."""
        self._ensure()
        group, _, version = api_version.rpartition("/")
        r = self._by_gvk.get((group, version, kind))
        if r is None and refresh and time.monotonic() - self._loaded_at > 0.5:
            self.refresh()
            r = self._by_gvk.get((group, version, kind))
        if r is None:
            raise NoKindMatch(f'no matches for kind "{kind}" in version "{api_version}" '
                              "(is its CustomResourceDefinition applied, and is this version served?)")
        return r

    def find(self, kind: str, api_version: str | None = None) -> Resource:
        """A resource by kind or plural name (``Deployment``, ``deployments``, ``deploy.apps``...),
        preferring the group's preferred version and core/built-in groups on ambiguity."""
        if api_version:
            return self.resolve(api_version, kind)
        self._ensure()
        for attempt in (0, 1):
            cands = self._candidates(kind)
            if cands:
                return cands[0]
            if attempt == 0:
                self.refresh()
        raise NoKindMatch(f'the server does not serve a resource named "{kind}"')

    def _candidates(self, kind: str) -> list[Resource]:
        k = kind.lower()
        group = ""
        if "." in k:
            k, _, group = k.partition(".")
        cands = list(self._by_kind.get(k, [])) + list(self._by_plural.get(k, []))
        if group:
            cands = [r for r in cands if r.group == group or r.group.startswith(group + ".")]

        def rank(r: Resource):
            pref = self._preferred.get(r.group) == r.version
            builtin = r.group == "" or "." not in r.group or r.group.endswith(".k8s.io")
            return (not builtin, r.group != "", not pref)

        out: list[Resource] = []
        for r in sorted(cands, key=rank):
            if r not in out:
                out.append(r)
        return out

    def all(self, *, preferred_only: bool = True) -> list[Resource]:
        """Every served resource (preferred versions only by default)."""
        self._ensure()
        rs = list(self._by_gvk.values())
        if preferred_only:
            rs = [r for r in rs if self._preferred.get(r.group) == r.version]
        return rs

    @property
    def stale_group_versions(self) -> set[str]:
        """Group versions the aggregator reports as Stale (an APIService without a backend)."""
        self._ensure()
        return set(self._stale_groups)
