"""Remote kustomize bases: find them, resolve them from the offline kit, record them into one.

kustomize fetches a resource over the network when it is a URL: a git repository path
(``https://github.com/kubernetes-sigs/lws//config/default?ref=v0.7.0``, where ``//`` separates the
repository from the folder; without it, the first two path components of a github.com URL are the
repository) or a plain file (``https://github.com/kubernetes-sigs/jobset/releases/download/v0.10.1/
manifests.yaml``). The offline kit keeps each one under ``remote/``:

- git: ``remote/<host>/<org>/<repo>@<ref>/<folder>`` (the repository tree at that ref);
- file: ``remote/<host>/<URL path>``.

:func:`walk` follows the kustomization graph from chosen entries and lists every remote reference
with the kustomization that names it; :func:`resolve` matches them with the kit;
:func:`rewrite` points the (copied) kustomizations at local copies. Nothing here opens a socket.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import yaml

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
# Fields whose entries may be other kustomizations (folders) or remote URLs.
GRAPH_FIELDS = ("resources", "bases", "components", "generators", "transformers", "validators")
_GIT_HOSTS = ("github.com", "gitlab.com", "bitbucket.org")
_FILE_EXT = (".yaml", ".yml", ".json")
LOCAL_DIR = "_mlplat_remote"  # where a build keeps its copies of kit entries


class RemoteError(ValueError):
    """A reference that looks remote but cannot be understood."""


@dataclass(frozen=True)
class RemoteRef:
    """One remote reference as kustomize would fetch it."""

    url: str  # as written
    kind: str  # git | file
    host: str
    repo: str = ""  # org/repo (git)
    ref: str = ""  # tag, branch or commit (git)
    subpath: str = ""  # folder inside the repository (git) or URL path (file)

    @property
    def kit_path(self) -> str:
        """Where the kit keeps it, relative to the kit root."""
        if self.kind == "file":
            return f"remote/{self.host}/{self.subpath}"
        base = f"remote/{self.host}/{self.repo}@{self.ref or 'HEAD'}"
        return f"{base}/{self.subpath}" if self.subpath else base

    @property
    def repo_root(self) -> str:
        """The kit folder of the whole repository at its ref (git), or the file (file)."""
        if self.kind == "file":
            return self.kit_path
        return f"remote/{self.host}/{self.repo}@{self.ref or 'HEAD'}"

    @property
    def clone_url(self) -> str:
        return f"https://{self.host}/{self.repo}"

    def record_commands(self, kit: str | os.PathLike) -> list[str]:
        """Shell commands that fetch this reference into ``kit`` on a connected machine (``kit``
        may be a shell variable such as ``$KIT``)."""
        dest = f"{kit}/{self.kit_path}"
        if self.kind == "file":
            return [f"mkdir -p {_q(dest.rsplit('/', 1)[0])}",
                    f"curl -fsSL --retry 3 --max-time 120 -o {_q(dest)} {shlex.quote(self.url)}"]
        root = f"{kit}/{self.repo_root}"
        tmp = _q(f"/tmp/mlplat-kit-{self.repo.replace('/', '-')}-{self.ref}")
        return [f"rm -rf {tmp} && git clone --depth 1 --branch {shlex.quote(self.ref)} {self.clone_url} {tmp}",
                f"mkdir -p {_q(root)} && cp -a {tmp}/. {_q(root)}/ && rm -rf {_q(root)}/.git {tmp}"]


def _q(s: str) -> str:
    """Quote for the shell, but leave a leading ``$VAR`` expandable."""
    if re.fullmatch(r"[\w@%+=:,./$-]+", s):
        return s
    return shlex.quote(s)


def is_remote(entry: str) -> bool:
    """Would kustomize fetch this entry over the network?"""
    e = entry.strip()
    if e.startswith(("http://", "https://", "git::", "ssh://", "git@", "file://")):
        return True
    return any(e.startswith(h + "/") for h in _GIT_HOSTS)


def parse_remote(url: str) -> RemoteRef:
    """Split a kustomize remote reference into host, repository, ref and path."""
    raw = url.strip()
    s = raw[len("git::"):] if raw.startswith("git::") else raw
    if s.startswith("git@"):
        # git@github.com:org/repo//path?ref=x
        host, _, rest = s[4:].partition(":")
        s = f"ssh://{host}/{rest}"
    if not re.match(r"^[a-z+]+://", s):
        s = "https://" + s
    parts = urlsplit(s)
    host = parts.hostname or ""
    query = parse_qs(parts.query)
    ref = (query.get("ref") or query.get("version") or [""])[0]
    path = parts.path.lstrip("/")
    if not host or not path:
        raise RemoteError(f"{url!r}: no host or path")
    if not ref and "//" not in path and path.endswith(_FILE_EXT) and parts.scheme in ("http", "https"):
        return RemoteRef(raw, "file", host, subpath=path)
    if "//" in path:
        repo, _, sub = path.partition("//")
    else:
        comps = path.split("/")
        if host in _GIT_HOSTS or len(comps) >= 2:
            repo, sub = "/".join(comps[:2]), "/".join(comps[2:])
        else:
            raise RemoteError(f"{url!r}: cannot tell the repository from the folder (write REPO//FOLDER)")
    repo = repo.strip("/")
    if repo.endswith(".git"):
        repo = repo[:-4]
    if "_git/" in repo:  # Azure DevOps style org/project/_git/repo
        raise RemoteError(f"{url!r}: _git/ repositories are not supported in the kit layout")
    return RemoteRef(raw, "git", host, repo, ref, sub.strip("/"))


def kustomization_file(folder: Path) -> Path | None:
    for n in KUSTOMIZATION_FILES:
        if (folder / n).is_file():
            return folder / n
    return None


def load_kustomization(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise RemoteError(f"{path}: not valid YAML: {e}") from None
    return data if isinstance(data, dict) else {}


@dataclass
class Use:
    """A remote reference and the kustomization (field, index) that names it."""

    remote: RemoteRef
    kustomization: Path
    field: str
    index: int


@dataclass
class Graph:
    """What :func:`walk` found from some entries."""

    folders: set[Path] = field(default_factory=set)  # every kustomization folder reached
    uses: list[Use] = field(default_factory=list)
    helm: list[tuple[Path, str]] = field(default_factory=list)  # helmCharts need a chart repo
    entry_remotes: dict[str, list[Use]] = field(default_factory=dict)  # entry -> uses under it
    problems: list[str] = field(default_factory=list)

    @property
    def remotes(self) -> list[RemoteRef]:
        seen: dict[str, RemoteRef] = {}
        for u in self.uses:
            seen.setdefault(u.remote.url, u.remote)
        return list(seen.values())


def walk(base: Path, entries: list[str]) -> Graph:
    """Follow the kustomization graph from ``entries`` (paths relative to ``base``)."""
    g = Graph()
    for entry in entries:
        before = len(g.uses)
        if is_remote(entry):
            try:
                g.uses.append(Use(parse_remote(entry), base, "resources", -1))
            except RemoteError as e:
                g.problems.append(str(e))
        else:
            _walk_folder((base / entry).resolve(), g, set())
        g.entry_remotes[entry] = g.uses[before:]
    return g


def _walk_folder(folder: Path, g: Graph, stack: set[Path]) -> None:
    kfile = kustomization_file(folder)
    if kfile is None:
        return  # a plain file resource, or a folder kustomize will complain about itself
    if folder in stack or folder in g.folders:
        return
    g.folders.add(folder)
    data = load_kustomization(kfile)
    for fld in GRAPH_FIELDS:
        items = data.get(fld) or []
        if not isinstance(items, list):
            continue
        for i, item in enumerate(items):
            if not isinstance(item, str):
                continue
            if is_remote(item):
                try:
                    g.uses.append(Use(parse_remote(item), kfile, fld, i))
                except RemoteError as e:
                    g.problems.append(f"{kfile}: {e}")
                continue
            sub = (folder / item).resolve()
            if sub.is_dir():
                _walk_folder(sub, g, stack | {folder})
    for chart in data.get("helmCharts") or []:
        if isinstance(chart, dict):
            g.helm.append((kfile, f"{chart.get('name')} from {chart.get('repo') or 'a local chart'}"))


def walk_entries(base: Path, entries: list[str]) -> Graph:
    """Like :func:`walk`, but each entry's ``entry_remotes`` lists every remote below it even when
    another entry reached the same folders first."""
    total = Graph()
    for entry in entries:
        one = walk(base, [entry])
        total.folders |= one.folders
        for u in one.uses:
            if not any(x.kustomization == u.kustomization and x.field == u.field and x.index == u.index
                       for x in total.uses):
                total.uses.append(u)
        total.helm.extend(h for h in one.helm if h not in total.helm)
        total.problems.extend(p for p in one.problems if p not in total.problems)
        total.entry_remotes[entry] = one.uses
    return total


@dataclass
class Resolution:
    """The kit's answer for every remote reference."""

    found: dict[str, Path] = field(default_factory=dict)  # url -> kit path
    missing: list[RemoteRef] = field(default_factory=list)

    def ok(self) -> bool:
        return not self.missing


def resolve(remotes: list[RemoteRef], kit: Path | None) -> Resolution:
    """Match each remote with the kit (``kit`` holds ``remote/``)."""
    res = Resolution()
    for r in remotes:
        p = (kit / r.kit_path) if kit else None
        if p is not None and p.exists():
            res.found[r.url] = p
        else:
            res.missing.append(r)
    return res


def localize(graph: Graph, resolution: Resolution, kit: Path, src_root: Path, build_root: Path) -> list[dict]:
    """In the build copy ``build_root`` (a copy of ``src_root``), copy the kit entries in and
    rewrite every kustomization that names a resolved remote to a relative local path.
    Returns one record per rewritten entry: kustomization, url, local path."""
    done: list[dict] = []
    copied: set[str] = set()
    by_file: dict[Path, list[Use]] = {}
    for u in graph.uses:
        if u.remote.url in resolution.found and u.index >= 0:
            by_file.setdefault(u.kustomization, []).append(u)
    for kfile, uses in sorted(by_file.items()):
        target_file = build_root / kfile.relative_to(src_root)
        data = load_kustomization(target_file)
        for u in uses:
            r = u.remote
            local = _copy_in(r, kit, build_root, copied)
            rel = os.path.relpath(local, target_file.parent)
            items = data.get(u.field)
            if not isinstance(items, list) or u.index >= len(items) or items[u.index] != r.url:
                raise RemoteError(f"{target_file}: {u.field}[{u.index}] is not {r.url} any more")
            items[u.index] = rel
            done.append({"kustomization": str(kfile.relative_to(src_root)), "url": r.url, "local": rel,
                         "kit": r.kit_path})
        target_file.write_text("# rewritten by mlplat: remote bases resolved from the offline kit\n"
                               + yaml.safe_dump(data, sort_keys=False, width=200))
    return done


def _copy_in(r: RemoteRef, kit: Path, build_root: Path, copied: set[str]) -> Path:
    """Copy a kit entry into the build tree; return the local folder to reference."""
    local_root = build_root / LOCAL_DIR
    if r.kind == "file":
        wrapper = local_root / r.host / (r.subpath + ".d")
        if r.kit_path not in copied:
            wrapper.mkdir(parents=True, exist_ok=True)
            shutil.copy2(kit / r.kit_path, wrapper / Path(r.subpath).name)
            (wrapper / "kustomization.yaml").write_text(
                "# mlplat: wraps the release asset " + r.url + "\n"
                "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
                f"resources:\n- {Path(r.subpath).name}\n")
            copied.add(r.kit_path)
        return wrapper
    repo_local = local_root / r.repo_root[len("remote/"):]
    if r.repo_root not in copied:
        if not repo_local.exists():
            shutil.copytree(kit / r.repo_root, repo_local, symlinks=True)
        copied.add(r.repo_root)
    local = repo_local / r.subpath if r.subpath else repo_local
    if local.is_file():
        # a git path naming one file: wrap it like a release asset
        wrapper = local.parent / (local.name + ".d")
        wrapper.mkdir(exist_ok=True)
        shutil.copy2(local, wrapper / local.name)
        (wrapper / "kustomization.yaml").write_text(f"resources:\n- {local.name}\n")
        return wrapper
    return local


def record_plan(remotes: list[RemoteRef], kit: str | os.PathLike) -> list[str]:
    """Commands that record ``remotes`` into an offline kit (run on a connected machine)."""
    out: list[str] = []
    seen: set[str] = set()
    for r in remotes:
        key = r.repo_root
        if key in seen:
            continue
        seen.add(key)
        out.extend(r.record_commands(kit))
    return out


def record(remotes: list[RemoteRef], kit: str | os.PathLike, timeout: float = 600) -> list[str]:
    """Fetch ``remotes`` into ``kit`` (online). Returns the commands run; raises on the first failure."""
    cmds = record_plan(remotes, kit)
    for c in cmds:
        try:
            p = subprocess.run(["bash", "-o", "pipefail", "-c", c], capture_output=True, text=True, timeout=timeout,
                               env=dict(os.environ, GIT_TERMINAL_PROMPT="0"))
        except subprocess.TimeoutExpired:
            raise RemoteError(f"timed out after {timeout:g} s: {c}") from None
        if p.returncode != 0:
            raise RemoteError(f"failed ({p.returncode}): {c}: {p.stderr.strip()[-600:]}")
    return cmds
