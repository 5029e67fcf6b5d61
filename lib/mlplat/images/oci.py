"""A small OCI image-layout writer: layers from files, one ``.tar`` archive that ``ctr images import`` reads.

No registry, no daemon, no external tool. An image is a list of layers, each a list of
:class:`Entry` (a host file under an in-image path, a directory, a symlink, or bytes), plus an
:class:`ImageConfig`. :func:`write_image` writes one archive holding the OCI image layout
(``oci-layout``, ``blobs/sha256/...``, ``index.json``), atomically (a temporary file beside the
target, then ``rename``):

- **deterministic**: entries sorted by path, parents added as directories, uid/gid 0, no user or
  group names, a fixed mtime (unless an entry keeps its own, see :class:`Entry`), gzip with mtime 0
  and no file name. The same inputs give the same bytes, so the same digests.
- **streaming**: layer tars go straight into the archive while being hashed (sha256 of the
  uncompressed tar is the ``diff_id``, sha256 of the blob is its digest); the blob's tar header is
  written with a placeholder and patched once the digest and size are known. Memory use does not
  grow with layer size; multi-GB layers are fine. Sizes past 8 GiB use the GNU base-256 size field
  (read by Go's ``archive/tar``, which containerd uses, and by Python's ``tarfile``).
- **layers** are uncompressed by default (``application/vnd.oci.image.layer.v1.tar``: faster on 2
  cores, and containerd stores what it is given); ``compress=True`` gzips one. A layer built from
  the same entries has the same digest in every image, so a big shared layer is stored once per
  containerd.
- ``index.json`` names the image with ``io.containerd.image.name`` (the full reference, what
  ``ctr images import`` stores) and ``org.opencontainers.image.ref.name`` (the tag, the OCI
  convention; ``ctr images import --base-name <repo>`` turns it into ``<repo>:<tag>``).

:func:`library_closure` finds what a dynamically linked ELF file needs at run time (its dynamic
loader and the shared libraries named by ``DT_NEEDED``, recursively), resolved as the glibc loader
does (``DT_RPATH``/``DT_RUNPATH`` with ``$ORIGIN``, the ld.so cache, the default directories), by
reading the ELF headers: nothing is executed.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import posixpath
import shutil
import stat
import struct
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"

# The mtime of every entry that does not keep its own: 2000-01-01T00:00:00Z. Not 0, which some
# tools print as "no date"; any fixed value keeps the layers reproducible.
FIXED_MTIME = 946684800
_CHUNK = 1 << 20
_PROGRESS_EVERY = 512 << 20  # bytes between progress lines while writing a layer

Progress = Callable[[str], None]


class OciError(ValueError):
    """Bad input to the image writer (an invalid path, a conflict, a missing source file)."""


# ----------------------------------------------------------------------------------------------
# Entries


@dataclass(frozen=True)
class Entry:
    """One thing in a layer. Build them with :func:`file`, :func:`directory`, :func:`symlink`,
    :func:`content` or :func:`tree`.

    ``path`` is the in-image path (stored without the leading ``/``). ``mtime`` None means
    :data:`FIXED_MTIME`; :func:`file` and :func:`tree` can keep the host file's mtime instead
    (``keep_mtime=True``), which Python needs: a ``.pyc`` is only used when the mtime recorded in it
    equals its ``.py`` file's mtime.
    """

    path: str
    kind: str  # file | dir | symlink | bytes
    mode: int = 0o644
    source: Path | None = None
    data: bytes | None = None
    target: str | None = None
    mtime: int | None = None


def _clean(path: str) -> str:
    if not isinstance(path, str) or not path.strip("/"):
        raise OciError(f"image path {path!r} is empty")
    if "\x00" in path:
        raise OciError(f"image path {path!r} contains a NUL byte")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise OciError(f"image path {path!r} contains '..'")
    return "/".join(parts)


def file(path: str, source: str | os.PathLike, mode: int | None = None, *, keep_mtime: bool = False) -> Entry:
    """The host file ``source`` (symlinks followed) at ``path``; ``mode`` defaults to the source's."""
    src = Path(source)
    try:
        st = src.stat()
    except OSError as e:
        raise OciError(f"{path}: source {src} cannot be read: {e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise OciError(f"{path}: source {src} is not a regular file")
    return Entry(_clean(path), "file", stat.S_IMODE(st.st_mode) if mode is None else mode, source=src,
                 mtime=int(st.st_mtime) if keep_mtime else None)


def directory(path: str, mode: int = 0o755) -> Entry:
    return Entry(_clean(path), "dir", mode)


def symlink(path: str, target: str) -> Entry:
    if not target or "\x00" in target:
        raise OciError(f"{path}: symlink target {target!r} is invalid")
    return Entry(_clean(path), "symlink", 0o777, target=target)


def content(path: str, data: bytes | str, mode: int = 0o644) -> Entry:
    """``data`` (bytes, or text written as UTF-8) as the file ``path``."""
    if isinstance(data, str):
        data = data.encode()
    return Entry(_clean(path), "bytes", mode, data=bytes(data))


def tree(path: str, source: str | os.PathLike, *, exclude: Callable[[str], bool] | None = None,
         keep_mtime: bool = False) -> list[Entry]:
    """The host directory ``source`` at ``path``: its files, directories and symlinks (kept as
    symlinks) with their modes. ``exclude(rel)`` gets each relative path (``a/b.py``) and drops it,
    and for a directory everything below it. Sockets, FIFOs and devices are left out."""
    root = Path(source)
    if not root.is_dir():
        raise OciError(f"{path}: source {root} is not a directory")
    base = _clean(path)
    out: list[Entry] = [directory(base, stat.S_IMODE(root.stat().st_mode))]
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir
        keep_dirs = []
        for d in sorted(dirnames):
            rel = posixpath.join(rel_dir, d) if rel_dir else d
            if exclude and exclude(rel):
                continue
            p = Path(dirpath, d)
            if p.is_symlink():  # os.walk lists symlinks to directories among dirnames
                out.append(symlink(f"{base}/{rel}", os.readlink(p)))
                continue
            out.append(directory(f"{base}/{rel}", stat.S_IMODE(p.lstat().st_mode)))
            keep_dirs.append(d)
        dirnames[:] = keep_dirs
        for name in sorted(filenames):
            rel = posixpath.join(rel_dir, name) if rel_dir else name
            if exclude and exclude(rel):
                continue
            p = Path(dirpath, name)
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                out.append(symlink(f"{base}/{rel}", os.readlink(p)))
            elif stat.S_ISREG(st.st_mode):
                out.append(Entry(_clean(f"{base}/{rel}"), "file", stat.S_IMODE(st.st_mode), source=p,
                                 mtime=int(st.st_mtime) if keep_mtime else None))
    return out


def _normalize(entries: Iterable[Entry]) -> list[Entry]:
    """Sorted entries with every parent directory present; conflicts are errors."""
    by_path: dict[str, Entry] = {}
    for e in entries:
        if not isinstance(e, Entry):
            raise OciError(f"not an Entry: {e!r}")
        old = by_path.get(e.path)
        if old is not None and old != e:
            if old.kind == "dir" and e.kind == "dir":  # two modes for one directory: the last wins
                by_path[e.path] = e
                continue
            raise OciError(f"{e.path}: given twice ({old.kind} and {e.kind}) with different content")
        by_path[e.path] = e
    for p in list(by_path):
        parent = posixpath.dirname(p)
        while parent:
            have = by_path.get(parent)
            if have is None:
                by_path[parent] = directory(parent)
            elif have.kind != "dir":
                raise OciError(f"{p}: its parent {parent} is a {have.kind}, not a directory")
            parent = posixpath.dirname(parent)
    return [by_path[p] for p in sorted(by_path)]


# ----------------------------------------------------------------------------------------------
# Writers


class _Sink:
    """Counts and hashes what passes through, then hands it on."""

    def __init__(self, out, progress: Callable[[int], None] | None = None):
        self.out = out
        self.sha = hashlib.sha256()
        self.size = 0
        self._progress = progress
        self._next = _PROGRESS_EVERY

    def write(self, b) -> int:
        self.sha.update(b)
        self.out.write(b)
        self.size += len(b)
        if self._progress and self.size >= self._next:
            self._next += _PROGRESS_EVERY
            self._progress(self.size)
        return len(b)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        pass

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha.hexdigest()


def _tarinfo(e: Entry) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(e.path)
    ti.mode = e.mode
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.mtime = FIXED_MTIME if e.mtime is None else e.mtime
    if e.kind == "dir":
        ti.type = tarfile.DIRTYPE
    elif e.kind == "symlink":
        ti.type = tarfile.SYMTYPE
        ti.linkname = e.target
    elif e.kind == "bytes":
        ti.size = len(e.data)
    return ti


def _write_layer_tar(entries: list[Entry], out) -> None:
    tf = tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT)
    tf.copybufsize = _CHUNK
    try:
        for e in entries:
            ti = _tarinfo(e)
            if e.kind == "file":
                with open(e.source, "rb") as f:
                    ti.size = os.fstat(f.fileno()).st_size
                    tf.addfile(ti, f)
                    if f.read(1):
                        raise OciError(f"{e.path}: {e.source} grew while being written")
            elif e.kind == "bytes":
                tf.addfile(ti, io.BytesIO(e.data))
            else:
                tf.addfile(ti)
    except OSError as e:
        raise OciError(f"layer: {e}") from None
    finally:
        tf.close()


@dataclass
class Layer:
    """A layer to write: its entries, and whether to gzip it. ``comment`` goes into the history."""

    entries: list[Entry]
    compress: bool = False
    comment: str = ""


@dataclass(frozen=True)
class LayerInfo:
    """A written layer: blob ``digest`` and ``size``, ``diff_id`` (sha256 of the uncompressed tar)."""

    digest: str
    size: int
    diff_id: str
    media_type: str
    comment: str = ""


@dataclass
class ImageConfig:
    """The runtime part of the image config (what ``docker inspect`` shows under ``Config``)."""

    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    env: list[str] = field(default_factory=lambda: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
    working_dir: str = ""
    user: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    exposed_ports: list[str] = field(default_factory=list)
    created: str = "2000-01-01T00:00:00Z"
    architecture: str = "amd64"
    os: str = "linux"

    def to_json(self, layers: list[LayerInfo]) -> dict:
        cfg: dict = {"Env": list(self.env)}
        if self.entrypoint is not None:
            cfg["Entrypoint"] = list(self.entrypoint)
        if self.cmd is not None:
            cfg["Cmd"] = list(self.cmd)
        if self.working_dir:
            cfg["WorkingDir"] = self.working_dir
        if self.user:
            cfg["User"] = self.user
        if self.labels:
            cfg["Labels"] = dict(sorted(self.labels.items()))
        if self.exposed_ports:
            cfg["ExposedPorts"] = {p: {} for p in sorted(self.exposed_ports)}
        return {
            "created": self.created,
            "architecture": self.architecture,
            "os": self.os,
            "config": cfg,
            "rootfs": {"type": "layers", "diff_ids": [la.diff_id for la in layers]},
            "history": [{"created": self.created, "created_by": la.comment or "mlplat.images.oci"} for la in layers],
        }


@dataclass(frozen=True)
class WrittenImage:
    """What :func:`write_image` wrote: the archive, its size, and the digests inside."""

    path: Path
    name: str
    size: int
    manifest_digest: str
    config_digest: str
    layers: tuple[LayerInfo, ...]
    seconds: float


def _json_bytes(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _header(name: str, size: int, mode: int = 0o644, kind: bytes = tarfile.REGTYPE) -> bytes:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime, ti.type = size, mode, FIXED_MTIME, kind
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    buf = ti.tobuf(format=tarfile.GNU_FORMAT)  # GNU: base-256 sizes past 8 GiB, still one block
    if len(buf) != tarfile.BLOCKSIZE:
        raise OciError(f"archive member name {name!r} is too long")
    return buf


class _Archive:
    """The outer tar, written member by member to a seekable file."""

    def __init__(self, f):
        self.f = f
        self.names: set[str] = set()

    def _pad(self, size: int) -> None:
        rem = size % tarfile.BLOCKSIZE
        if rem:
            self.f.write(b"\0" * (tarfile.BLOCKSIZE - rem))

    def add_dir(self, name: str) -> None:
        self.f.write(_header(name, 0, 0o755, tarfile.DIRTYPE))

    def add_bytes(self, name: str, data: bytes) -> None:
        self.names.add(name)
        self.f.write(_header(name, len(data)))
        self.f.write(data)
        self._pad(len(data))

    def add_blob(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        name = "blobs/sha256/" + digest.split(":", 1)[1]
        if name not in self.names:
            self.add_bytes(name, data)
        return digest

    def add_layer(self, layer: Layer, progress: Progress | None, label: str) -> LayerInfo:
        entries = _normalize(layer.entries)
        start = self.f.tell()
        placeholder = "blobs/sha256/" + "0" * 64
        self.f.write(_header(placeholder, 0))
        t0 = time.monotonic()
        def report(n: int) -> None:
            progress(f"{label}: {n / 2**30:.1f} GiB written ({time.monotonic() - t0:.0f}s)")

        report = report if progress else None
        blob = _Sink(self.f, None if layer.compress else report)
        if layer.compress:
            gz = gzip.GzipFile(filename="", mode="wb", fileobj=blob, mtime=0, compresslevel=6)
            plain = _Sink(gz, report)
            _write_layer_tar(entries, plain)
            gz.close()
            diff_id, media = plain.digest, MEDIA_LAYER_GZIP
        else:
            _write_layer_tar(entries, blob)
            diff_id, media = blob.digest, MEDIA_LAYER
        digest, size = blob.digest, blob.size
        name = "blobs/sha256/" + digest.split(":", 1)[1]
        if name in self.names:
            # The same layer twice in one image (or a config with the same bytes): drop the copy.
            self.f.seek(start)
            self.f.truncate()
        else:
            self._pad(size)
            end = self.f.tell()
            self.f.seek(start)
            self.f.write(_header(name, size))
            self.f.seek(end)
            self.names.add(name)
        return LayerInfo(digest, size, diff_id, media, layer.comment)

    def close(self) -> None:
        self.f.write(b"\0" * (2 * tarfile.BLOCKSIZE))
        rem = self.f.tell() % tarfile.RECORDSIZE
        if rem:
            self.f.write(b"\0" * (tarfile.RECORDSIZE - rem))


def write_image(out: str | os.PathLike, name: str, layers: Iterable[Layer | list[Entry]], config: ImageConfig,
                *, annotations: dict[str, str] | None = None, progress: Progress | None = None) -> WrittenImage:
    """Write the image ``name`` (a full reference, ``registry/repo:tag``) as an OCI layout archive at
    ``out``. ``layers`` are :class:`Layer` (or plain entry lists: uncompressed layers), lowest first.
    ``annotations`` go on the manifest and on its descriptor in ``index.json`` (besides the two
    name annotations). The archive appears only when complete (written to ``out.tmp-<pid>``, then
    renamed); on error nothing is left."""
    t0 = time.monotonic()
    out = Path(out)
    ref_tag = _tag_of(name)
    layers = [la if isinstance(la, Layer) else Layer(list(la)) for la in layers]
    if not layers:
        raise OciError(f"{name}: an image needs at least one layer")
    annotations = dict(annotations or {})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            arc = _Archive(f)
            arc.add_bytes("oci-layout", _json_bytes({"imageLayoutVersion": "1.0.0"}))
            arc.add_dir("blobs/")
            arc.add_dir("blobs/sha256/")
            infos = []
            for i, layer in enumerate(layers):
                infos.append(arc.add_layer(layer, progress, f"{name} layer {i + 1}/{len(layers)}"))
            cfg_bytes = _json_bytes(config.to_json(infos))
            cfg_digest = arc.add_blob(cfg_bytes)
            manifest = {
                "schemaVersion": 2,
                "mediaType": MEDIA_MANIFEST,
                "config": {"mediaType": MEDIA_CONFIG, "digest": cfg_digest, "size": len(cfg_bytes)},
                "layers": [{"mediaType": la.media_type, "digest": la.digest, "size": la.size} for la in infos],
            }
            if annotations:
                manifest["annotations"] = dict(sorted(annotations.items()))
            man_bytes = _json_bytes(manifest)
            man_digest = arc.add_blob(man_bytes)
            index = {
                "schemaVersion": 2,
                "mediaType": MEDIA_INDEX,
                "manifests": [{
                    "mediaType": MEDIA_MANIFEST,
                    "digest": man_digest,
                    "size": len(man_bytes),
                    "platform": {"architecture": config.architecture, "os": config.os},
                    "annotations": dict(sorted({**annotations, ANNOTATION_CONTAINERD_NAME: name,
                                                ANNOTATION_REF_NAME: ref_tag}.items())),
                }],
            }
            arc.add_bytes("index.json", _json_bytes(index))
            arc.close()
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return WrittenImage(out, name, out.stat().st_size, man_digest, cfg_digest, tuple(infos),
                        round(time.monotonic() - t0, 1))


def _tag_of(name: str) -> str:
    """The tag of a full reference; references without a tag or with a digest are refused (the
    lab's images are always named by tag)."""
    if not isinstance(name, str) or "@" in name or any(c.isspace() for c in name):
        raise OciError(f"image name {name!r}: want registry/repository:tag")
    last = name.rsplit("/", 1)[-1]
    if ":" not in last or "/" not in name:
        raise OciError(f"image name {name!r}: want a full reference with a registry and a tag")
    repo, tag = name.rsplit(":", 1)
    if not tag or repo != repo.lower():
        raise OciError(f"image name {name!r}: want registry/repository:tag (lower-case repository)")
    return tag


def read_index(archive: str | os.PathLike) -> dict:
    """The ``index.json`` of an image archive (seeks over the blobs; does not read them)."""
    with tarfile.open(archive, "r:") as tf:
        member = tf.getmember("index.json")
        return json.loads(tf.extractfile(member).read())


# ----------------------------------------------------------------------------------------------
# ELF library closure

_DEFAULT_LIB_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib")
# Where :func:`library_closure` puts libraries the host found outside the default directories
# (through an absolute RPATH, an ld.so.conf directory such as /usr/local/lib, ...): the image has
# no ld.so cache, so the loader only looks in its default directories.
IMAGE_LIB_DIR = "/usr/lib/x86_64-linux-gnu"
_EM_X86_64 = 62


@dataclass(frozen=True)
class ElfInfo:
    """What the loader needs to know about one ELF file."""

    path: Path
    interpreter: str | None
    needed: tuple[str, ...]
    rpath: tuple[str, ...]
    runpath: tuple[str, ...]


def read_elf(path: str | os.PathLike) -> ElfInfo | None:
    """The interpreter, ``DT_NEEDED``, ``DT_RPATH`` and ``DT_RUNPATH`` of an ELF file; None when
    the file is not ELF. Only 64-bit little-endian x86-64 is read; other ELF files are an error."""
    path = Path(path)
    with open(path, "rb") as f:
        hdr = f.read(64)
        if hdr[:4] != b"\x7fELF":
            return None
        if len(hdr) < 64 or hdr[4] != 2 or hdr[5] != 1:
            raise OciError(f"{path}: not a 64-bit little-endian ELF file")
        (e_machine,) = struct.unpack_from("<H", hdr, 18)
        if e_machine != _EM_X86_64:
            raise OciError(f"{path}: ELF machine {e_machine}, not x86-64")
        (e_phoff,) = struct.unpack_from("<Q", hdr, 32)
        e_phentsize, e_phnum = struct.unpack_from("<HH", hdr, 54)
        f.seek(e_phoff)
        ph = f.read(e_phentsize * e_phnum)
        loads, interp, dyn = [], None, None
        for i in range(e_phnum):
            p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz, _memsz, _align = struct.unpack_from(
                "<IIQQQQQQ", ph, i * e_phentsize)
            if p_type == 1:  # PT_LOAD
                loads.append((p_vaddr, p_offset, p_filesz))
            elif p_type == 2:  # PT_DYNAMIC
                dyn = (p_offset, p_filesz)
            elif p_type == 3:  # PT_INTERP
                f.seek(p_offset)
                interp = f.read(p_filesz).split(b"\0", 1)[0].decode()
        if dyn is None:
            return ElfInfo(path, interp, (), (), ())
        f.seek(dyn[0])
        data = f.read(dyn[1])
        tags: list[tuple[int, int]] = []
        for off in range(0, len(data) - 15, 16):
            tag, val = struct.unpack_from("<qQ", data, off)
            if tag == 0:
                break
            tags.append((tag, val))
        strtab = next((v for t, v in tags if t == 5), None)
        strsz = next((v for t, v in tags if t == 10), None)
        if strtab is None or strsz is None:
            return ElfInfo(path, interp, (), (), ())
        str_off = next((off + strtab - va for va, off, sz in loads if va <= strtab < va + sz), None)
        if str_off is None:
            raise OciError(f"{path}: DT_STRTAB outside every PT_LOAD segment")
        f.seek(str_off)
        strings = f.read(strsz)

        def s(i: int) -> str:
            return strings[i:strings.index(b"\0", i)].decode()

        needed = tuple(s(v) for t, v in tags if t == 1)
        rpath = tuple(p for t, v in tags if t == 15 for p in s(v).split(":") if p)
        runpath = tuple(p for t, v in tags if t == 29 for p in s(v).split(":") if p)
        return ElfInfo(path, interp, needed, rpath, runpath)


def _ld_cache() -> dict[str, str]:
    """soname -> path from the host's ld.so cache (``ldconfig -p``), x86-64 entries only."""
    exe = shutil.which("ldconfig") or ("/sbin/ldconfig" if os.path.exists("/sbin/ldconfig") else None)
    if not exe:
        return {}
    try:
        out = subprocess.run([exe, "-p"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    cache: dict[str, str] = {}
    for line in out.splitlines()[1:]:
        left, sep, target = line.partition(" => ")
        if not sep or "x86-64" not in left:
            continue
        cache.setdefault(left.strip().split(" ", 1)[0], target.strip())
    return cache


def _expand(dirs: Iterable[str], origin: Path) -> list[str]:
    out = []
    for d in dirs:
        d = d.replace("${ORIGIN}", str(origin)).replace("$ORIGIN", str(origin))
        out.append(os.path.normpath(d))
    return out


def _under(path: str, roots: list[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def library_closure(paths: Iterable[str | os.PathLike], *, provided: Iterable[str | os.PathLike] = (),
                    extra: Iterable[str] = (), optional: Iterable[str] = (),
                    missing: list[tuple[str, str]] | None = None) -> dict[str, Path]:
    """What the ELF files ``paths`` load at run time, as ``{in-image path: host file}``.

    Resolves each ``DT_NEEDED`` name recursively the way the glibc loader does: ``DT_RPATH`` of the
    object and of the objects that loaded it (when the object has no ``DT_RUNPATH``), the object's
    ``DT_RUNPATH`` (``$ORIGIN`` expanded), the ld.so cache, then the default directories. Includes
    the dynamic loader (``PT_INTERP``). Libraries that are one of the files of ``provided`` or lie
    under one of its directories (what the image already holds, such as a copied
    ``site-packages``) are followed but not returned. A
    library found in a default directory keeps its path; one found elsewhere is placed in
    :data:`IMAGE_LIB_DIR` under the name the loader asks for. Host files are returned with
    symlinks resolved (the image gets a plain file under the requested name). ``extra`` are
    sonames that are loaded with ``dlopen`` rather than linked (glibc loads ``libgcc_s.so.1`` for
    thread cancellation), resolved like ``DT_NEEDED`` of the first file. Non-ELF files are skipped;
    statically linked files need nothing. A name that cannot be found is an :class:`OciError`,
    unless it is in ``optional`` (libraries the container runtime brings from the host, such as the
    NVIDIA driver's ``libcuda.so.1``): those are left out when the host lacks them. When a list is
    passed as ``missing``, every name that cannot be found is appended to it as ``(file, name)``
    instead of raising: the image then behaves as the host does (which cannot load them either).
    """
    optional = set(optional)
    provided_dirs: list[str] = []
    provided_files: set[str] = set()
    for p in provided:
        target = provided_dirs if os.path.isdir(p) else provided_files
        for form in {os.path.realpath(p), os.path.abspath(p)}:
            target.append(form) if target is provided_dirs else target.add(form)

    def is_provided(path: str) -> bool:
        return any(path in provided_files or _under(path, provided_dirs) for path in (path, os.path.realpath(path)))

    cache = _ld_cache()
    result: dict[str, Path] = {}
    seen_obj: set[tuple[str, tuple[str, ...]]] = set()

    def add(image_path: str, host: str) -> None:
        real = os.path.realpath(host)
        if image_path in result:
            return
        result[image_path] = Path(real)

    def find(name: str, obj: ElfInfo, chain_rpath: list[str]) -> tuple[str, str] | None:
        if "/" in name:
            return (name, name) if os.path.isfile(name) else None
        origin = obj.path.parent
        dirs: list[str] = []
        if not obj.runpath:
            dirs += _expand(obj.rpath, origin) + chain_rpath
        dirs += _expand(obj.runpath, origin)
        for d in dirs:
            cand = os.path.join(d, name)
            if os.path.isfile(cand):
                return cand, "search"
        if name in cache and os.path.isfile(cache[name]):
            return cache[name], "cache"
        for d in _DEFAULT_LIB_DIRS:
            cand = os.path.join(d, name)
            if os.path.isfile(cand):
                return cand, "default"
        return None

    def place(name: str, host: str) -> None:
        host_abs = os.path.abspath(host)
        if is_provided(host_abs):
            return
        d = os.path.dirname(host_abs)
        add(host_abs if d in _DEFAULT_LIB_DIRS else f"{IMAGE_LIB_DIR}/{name}", host)

    def visit(path: Path, chain_rpath: list[str]) -> None:
        key = (os.path.realpath(path), tuple(chain_rpath))
        if key in seen_obj:
            return
        seen_obj.add(key)
        info = read_elf(path)
        if info is None:
            return
        if info.interpreter:
            add(info.interpreter, info.interpreter)
        my_chain = chain_rpath + ([] if info.runpath else _expand(info.rpath, info.path.parent))
        for name in info.needed:
            found = find(name, info, my_chain)
            if found is None:
                if name in optional:
                    continue
                if missing is not None:
                    missing.append((str(path), name))
                    continue
                raise OciError(f"{path}: needs {name}, which the loader would not find on this machine")
            place(name, found[0])
            visit(Path(os.path.abspath(found[0])), my_chain)

    paths = [Path(p) for p in paths]
    for p in paths:
        visit(p, [])
    for name in extra:
        found = find(name, ElfInfo(Path("/"), None, (), (), ()), [])
        if found is None:
            raise OciError(f"{name} (asked for as extra) is not on this machine")
        place(name, found[0])
        visit(Path(os.path.abspath(found[0])), [])
    return dict(sorted(result.items()))


def closure_entries(closure: dict[str, Path]) -> list[Entry]:
    """:func:`library_closure`'s result as layer entries (plain files, modes of the host files)."""
    return [file(p, host) for p, host in closure.items()]


def iter_elf_files(root: str | os.PathLike) -> Iterator[Path]:
    """Every regular ELF file under ``root`` (symlinks not followed)."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath, name)
            try:
                if not p.is_symlink() and p.is_file():
                    with open(p, "rb") as f:
                        if f.read(4) == b"\x7fELF":
                            yield p
            except OSError:
                continue
