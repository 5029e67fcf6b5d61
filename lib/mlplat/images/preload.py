"""Pre-loading image archives into every node's containerd: the one place that copies and imports.

Used by phase 30 (the site's image kit: kubeadm's images, the CNI's, the checks', before ``kubeadm
init``, for air-gapped sites) and by phase 50 (Kubeflow's images, ``image_mirror.mode:
node-import``). Per host: probe what containerd already holds, with digests (``ctr -n k8s.io images ls``),
then for each missing image make its archive available on the host and ``ctr -n k8s.io images
import`` it. An archive already readable on the host at the same path with the same size (a shared
mount: NFS on a real site, the machine's disk in the lab) is imported in place; otherwise it is
copied over SFTP to :data:`mirror.REMOTE_DIR` first and removed after the import.
"""

from __future__ import annotations

import json
import shlex
import tarfile
from pathlib import Path

from ..report import StepResult, failed
from . import mirror
from .refs import ImageRef, try_parse

IMPORT_TIMEOUT = 1800.0


class KitError(ValueError):
    """An archive in the image kit is unreadable or names no image."""


def archive_index(path: str | Path) -> dict[str, str | None]:
    """The images an OCI or Docker archive carries (``index.json`` annotations, or
    ``manifest.json`` RepoTags): name -> manifest digest (None for Docker archives, whose
    manifests ``docker save`` rewrites), read without extracting it."""
    names: dict[str, str | None] = {}
    try:
        with tarfile.open(path) as tf:
            for member in tf:
                if member.name.lstrip("./") == "index.json":
                    idx = json.load(tf.extractfile(member))
                    for m in idx.get("manifests", []):
                        ann = m.get("annotations") or {}
                        name = ann.get("io.containerd.image.name") or ann.get("org.opencontainers.image.ref.name")
                        if name and (":" in name or "@" in name) and "/" in name:
                            names[name] = m.get("digest")
                    break
                if member.name.lstrip("./") == "manifest.json":
                    for m in json.load(tf.extractfile(member)):
                        names.update({t: None for t in m.get("RepoTags") or []})
                    break
    except (OSError, tarfile.TarError, ValueError) as e:
        raise KitError(f"{path}: not a readable image archive ({e})") from e
    if not names:
        raise KitError(f"{path}: the archive names no image (no io.containerd.image.name annotation or RepoTags)")
    return names


def kit(directory: str | Path) -> dict[str, Path]:
    """Image name (fully qualified) -> archive, for every ``*.tar`` in a kit directory."""
    return {n: p for n, (p, _d) in kit_index(directory).items()}


def kit_index(directory: str | Path) -> dict[str, tuple[Path, str | None]]:
    """Image name (fully qualified) -> (archive, manifest digest or None), for every ``*.tar``."""
    d = Path(directory)
    if not d.is_dir():
        raise KitError(f"image kit {d} is not a directory")
    out: dict[str, tuple[Path, str | None]] = {}
    for p in sorted(d.glob("*.tar")):
        for name, digest in archive_index(p).items():
            ref = try_parse(name)
            out[ref.full if ref else name] = (p, digest)
    if not out:
        raise KitError(f"image kit {d} holds no image archive (*.tar)")
    return out


PROBE_DIGESTS = "ctr -n k8s.io images ls"


def parse_digests(text: str) -> dict[str, str]:
    """Image name -> manifest digest from ``ctr -n k8s.io images ls`` (REF TYPE DIGEST ...)."""
    out = {}
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) >= 3 and f[2].startswith("sha256:") and not f[0].startswith("sha256:"):
            ref = try_parse(f[0])
            out[ref.full if ref else f[0]] = f[2]
    return out


def probe(pool, step: str, hosts: list[str] | None = None) -> tuple[dict[str, set[str]], list[StepResult]]:
    """host -> image names its containerd holds (k8s.io namespace), and one row per host."""
    present: dict[str, set[str]] = {}
    rows = []
    for r in pool.sh(PROBE_DIGESTS, step=step, sudo=True, hosts=hosts):
        if r.ok:
            digests = parse_digests(r.data.get("stdout", ""))
            present[r.host] = _Present(digests)
            r.message = f"{len(digests)} images in containerd (k8s.io)"
        rows.append(r)
    return present, rows


class _Present(set):
    """The names a host holds (a set, as mirror.present_on expects), with their digests."""

    def __init__(self, digests: dict[str, str]):
        super().__init__(digests)
        self.digests = digests


def import_missing(pool, archives: dict[str, Path], present: dict[str, set[str]], step: str,
                   platform: str = mirror.DEFAULT_PLATFORM, digests: dict[str, str | None] | None = None
                   ) -> list[StepResult]:
    """Import into each probed host every archive whose image it lacks, or holds under another
    digest (a rebuilt image of the same name), when ``digests`` (name -> the archive's manifest
    digest) is given; hosts in parallel, with a progress bar; one row per host."""
    from ..report.progress import tqdm

    def stale(name: str, names: set[str]) -> bool:
        want = (digests or {}).get(name)
        have = getattr(names, "digests", {}).get(name)
        return bool(want and have and want != have)

    todo: dict[str, list[tuple[str, Path]]] = {}
    for host, names in present.items():
        missing = [(n, p) for n, p in archives.items()
                   if not mirror.present_on(_ref(n), names) or stale(n, names)]
        if missing:
            todo[host] = missing
    if not todo:
        return [StepResult(h, step, message=f"all {len(archives)} images already present") for h in present]
    bar = tqdm(total=sum(len(v) for v in todo.values()), desc="import images", unit="image")

    def one(conn, host):
        items = todo.get(host.name)
        if not items:
            return StepResult(host.name, step, message=f"all {len(archives)} images already present")
        done, copied = [], 0
        for name, local in items:
            if not local.exists():
                return failed(host.name, step, f"archive {local} of {name} is missing")
            size = local.stat().st_size
            seen = conn.sudo(f"stat -L -c %s {shlex.quote(str(local))} 2>/dev/null")
            if seen.ok and seen.stdout.strip() == str(size):
                path, remove = str(local), ""
            else:
                conn.sudo(f"mkdir -p {mirror.REMOTE_DIR}", check=True)
                path = f"{mirror.REMOTE_DIR}/{local.name}"
                conn.connection.put(str(local), path)
                remove, copied = f" && rm -f {shlex.quote(path)}", copied + 1
            conn.sudo(f"ctr -n k8s.io images import --platform {platform} {shlex.quote(path)}{remove}",
                      check=True, timeout=IMPORT_TIMEOUT)
            done.append(name)
            bar.update(1)
        return StepResult(host.name, step, changed=True,
                          message=f"imported {len(done)} images ({copied} copied over SSH, {len(done) - copied} "
                                  f"read in place), {len(archives) - len(done)} already present",
                          data={"imported": done})

    try:
        return pool.run(one, step, hosts=list(todo)) + [
            StepResult(h, step, message=f"all {len(archives)} images already present") for h in present if h not in todo]
    finally:
        bar.close()


def _ref(name: str) -> ImageRef:
    ref = try_parse(name)
    if ref is None:
        raise KitError(f"{name!r} is not an image reference")
    return ref
