"""Where Kubeflow's manifests come from: an offline bundle (a directory or tarballs) or a git ref.

An offline bundle is what an operator carries into an air-gapped site. Accepted layouts of
``kubeflow.bundle``:

- a folder holding ``kubeflow-manifests-*.tar.gz`` and the offline kit ``remote-bases.tar.gz``
  (or an unpacked ``remote/`` folder) side by side, as in ``shared/fixtures/offline-bundle/``;
- the manifests tarball itself (the kit is looked for beside it);
- an unpacked manifests tree (the folder holding ``example/kustomization.yaml``, or its parent),
  with the kit as ``remote/`` inside or beside it.

Tarballs are unpacked once into the cache (``$MLPLAT_CACHE/kubeflow/unpacked/<sha256>``) and never
modified; builds work on copies. Nothing here opens a network connection. The git source is an
online path: :func:`git_fetch_plan` says what would be fetched, :func:`git_fetch` does it (with a
timeout) on a connected machine.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

KIT_TARBALL = "remote-bases.tar.gz"
KIT_DIR = "remote"


class SourceError(RuntimeError):
    """The manifests could not be found or unpacked; the message says what to fix."""


def cache_root() -> Path:
    """``$MLPLAT_CACHE`` or ``~/.cache/mlplat`` (the same root the lab's build cache uses)."""
    return Path(os.environ.get("MLPLAT_CACHE") or Path.home() / ".cache" / "mlplat")


@dataclass
class Source:
    """Manifests ready to build: ``root`` holds ``example/kustomization.yaml``; ``kit`` holds
    ``remote/`` (None when no kit was found)."""

    kind: str  # offline | git
    origin: str  # what the params named
    root: Path
    kit: Path | None
    digest: str  # content hash of manifests + kit, for caching builds
    release: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def example(self) -> Path:
        return self.root / "example" / "kustomization.yaml"


def find_root(path: Path) -> Path | None:
    """The manifests root at ``path`` or one level below (the folder holding example/kustomization.yaml)."""
    if (path / "example" / "kustomization.yaml").is_file():
        return path
    if path.is_dir():
        subs = [p for p in sorted(path.iterdir()) if p.is_dir() and (p / "example" / "kustomization.yaml").is_file()]
        if len(subs) == 1:
            return subs[0]
    return None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tree_sha256(path: Path) -> str:
    """A content hash of a folder (relative paths and file bytes), for cache keys."""
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file() and not p.is_symlink():
            h.update(str(p.relative_to(path)).encode() + b"\0")
            h.update(file_sha256(p).encode())
    return h.hexdigest()


def unpack(tarball: Path, cache: Path | None = None) -> Path:
    """Unpack a tarball once into the cache; return the folder. Member paths are checked
    (tarfile's ``data`` filter: no absolute paths, no ``..``, no device files)."""
    digest = file_sha256(tarball)
    base = (cache or cache_root()) / "kubeflow" / "unpacked"
    dest = base / digest[:20]
    if (dest / ".complete").exists():
        return dest
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{digest[:12]}-", dir=base))
    try:
        with tarfile.open(tarball) as tf:
            tf.extractall(tmp, filter="data")
        (tmp / ".complete").write_text(f"{tarball}\n{digest}\n")
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    except (tarfile.TarError, OSError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise SourceError(f"cannot unpack {tarball}: {e}") from None
    return dest


def _kit_from(candidates: list[Path], cache: Path | None) -> tuple[Path | None, str]:
    """The first kit found: a folder holding remote/, a remote/ folder itself, or a kit tarball."""
    for c in candidates:
        if c.is_dir() and c.name == KIT_DIR:
            return c.parent, tree_sha256(c)
        if c.is_dir() and (c / KIT_DIR).is_dir():
            return c, tree_sha256(c / KIT_DIR)
        if c.is_file() and c.name.endswith((".tar.gz", ".tgz", ".tar")):
            d = unpack(c, cache)
            if (d / KIT_DIR).is_dir():
                return d, file_sha256(c)
    return None, "no-kit"


def default_bundle() -> Path | None:
    """The shared fixtures' offline bundle (``$MLPLAT_SHARED/fixtures/offline-bundle``, else
    ``../shared`` beside the repository), used when ``kubeflow.bundle`` is null; None if absent."""
    here = Path(__file__).resolve()
    cands = [Path(os.environ["MLPLAT_SHARED"])] if os.environ.get("MLPLAT_SHARED") else []
    cands += [p.parent / "shared" for p in here.parents if (p / "pyproject.toml").exists()][:1]
    for c in cands:
        b = c / "fixtures" / "offline-bundle"
        if b.is_dir():
            return b
    return None


def offline(bundle: str | os.PathLike | None, cache: Path | None = None) -> Source:
    """Locate (and unpack) an offline bundle; raise :class:`SourceError` saying what is wrong.
    An empty ``bundle`` means :func:`default_bundle`."""
    if not bundle:
        bundle = default_bundle()
    if not bundle:
        raise SourceError("kubeflow.bundle is empty: set it to the offline bundle (a folder with "
                          "kubeflow-manifests-*.tar.gz and remote-bases.tar.gz, or an unpacked manifests tree)")
    p = Path(os.path.expanduser(str(bundle))).resolve()
    if not p.exists():
        raise SourceError(f"kubeflow.bundle {p} does not exist")
    notes: list[str] = []
    if p.is_file():
        root_dir = unpack(p, cache)
        digest = file_sha256(p)
        kit_candidates = [p.parent / KIT_TARBALL, p.parent / KIT_DIR, root_dir]
        origin_root = find_root(root_dir)
    else:
        origin_root = find_root(p)
        if origin_root is not None:
            digest = tree_sha256(origin_root)
            kit_candidates = [p / KIT_DIR, p.parent / KIT_DIR, p / KIT_TARBALL, p.parent / KIT_TARBALL,
                              origin_root / KIT_DIR]
        else:
            tars = sorted(p.glob("kubeflow-manifests*.tar.gz")) + sorted(p.glob("kubeflow-manifests*.tgz"))
            if len(tars) != 1:
                found = ", ".join(t.name for t in tars) or "none"
                raise SourceError(
                    f"{p} holds no manifests tree (example/kustomization.yaml) and not exactly one "
                    f"kubeflow-manifests-*.tar.gz (found: {found})")
            origin_root = find_root(unpack(tars[0], cache))
            digest = file_sha256(tars[0])
            notes.append(f"manifests from {tars[0].name}")
            kit_candidates = [p / KIT_DIR, p / KIT_TARBALL]
    if origin_root is None:
        raise SourceError(f"{p}: no example/kustomization.yaml found in the bundle")
    kit, kit_digest = _kit_from(kit_candidates, cache)
    if kit is None:
        notes.append("no offline kit (remote/ or remote-bases.tar.gz) found beside the manifests")
    else:
        notes.append(f"offline kit {kit / KIT_DIR}")
    release = _release_of(origin_root)
    return Source("offline", str(bundle), origin_root, kit,
                  hashlib.sha256(f"{digest}\n{kit_digest}".encode()).hexdigest(), release, notes)


def _release_of(root: Path) -> str:
    """The release named by the tree's folder (kubeflow-manifests-26.03 -> 26.03), if any."""
    name = root.name
    for prefix in ("kubeflow-manifests-", "manifests-"):
        if name.startswith(prefix):
            return name[len(prefix):]
    return ""


# -- git (online) ---------------------------------------------------------------------------
def git_dest(url: str, ref: str, cache: Path | None = None) -> Path:
    key = hashlib.sha256(f"{url}@{ref}".encode()).hexdigest()[:20]
    return (cache or cache_root()) / "kubeflow" / "git" / key


def git_fetch_plan(url: str, ref: str, cache: Path | None = None) -> list[str]:
    """The commands that fetch the manifests at ``ref`` (a tag or branch), shallow."""
    dest = git_dest(url, ref, cache)
    return [f"git clone --depth 1 --branch {ref} {url} {dest}"]


def git_fetch(url: str, ref: str, cache: Path | None = None, timeout: float = 600) -> Source:
    """Clone ``url`` at ``ref`` (online only); a later offline build uses the clone like a bundle."""
    dest = git_dest(url, ref, cache)
    if not find_root(dest):
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, GIT_TERMINAL_PROMPT="0")
        try:
            p = subprocess.run(["git", "clone", "--depth", "1", "--branch", ref, url, str(dest)],
                               capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            raise SourceError(f"git clone of {url}@{ref} timed out after {timeout:g} s") from None
        if p.returncode != 0:
            raise SourceError(f"git clone of {url}@{ref} failed: {p.stderr.strip()[-800:]}")
    src = offline(dest, cache)
    src.kind, src.origin = "git", f"{url}@{ref}"
    src.release = src.release or ref
    return src
