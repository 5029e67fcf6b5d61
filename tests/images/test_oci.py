"""The OCI image-layout writer (mlplat.images.oci), checked independently with hashlib, gzip and
tarfile: layout, digests, diff_ids, determinism, layer sharing, streaming, bad input, and the ELF
library closure against ldd."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tracemalloc
from pathlib import Path

import pytest
from mlplat.images import oci

NAME = "registry.example.invalid/team/tool:1.2.3"


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _read_archive(path: Path) -> dict[str, bytes]:
    with tarfile.open(path, "r:") as tf:
        return {m.name: (tf.extractfile(m).read() if m.isfile() else b"") for m in tf.getmembers()}


def _blob(files: dict[str, bytes], digest: str) -> bytes:
    return files["blobs/sha256/" + digest.split(":", 1)[1]]


def _layer_members(blob: bytes, gz: bool = False) -> list[tarfile.TarInfo]:
    raw = gzip.decompress(blob) if gz else blob
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tf:
        return tf.getmembers()


@pytest.fixture
def host_files(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "tool").write_bytes(b"#!/bin/sh\necho tool\n")
    (src / "tool").chmod(0o750)
    (src / "data.bin").write_bytes(os.urandom(70_000))
    return src


def _layers(src: Path) -> list[oci.Layer]:
    return [
        oci.Layer([oci.content("etc/motd", "hello\n"), oci.directory("tmp", 0o1777)], comment="base"),
        oci.Layer([
            oci.file("/usr/local/bin/tool", src / "tool"),
            oci.file("opt/data.bin", src / "data.bin", 0o600),
            oci.symlink("usr/bin/tool", "/usr/local/bin/tool"),
        ], compress=True, comment="tool"),
    ]


def test_layout_digests_and_diff_ids(tmp_path: Path, host_files: Path):
    cfg = oci.ImageConfig(entrypoint=["/usr/local/bin/tool"], cmd=["--help"], env=["PATH=/usr/bin", "A=b"],
                          working_dir="/opt", labels={"x": "y"})
    out = tmp_path / "img.tar"
    written = oci.write_image(out, NAME, _layers(host_files), cfg, annotations={"note": "n"})
    assert written.path == out and written.size == out.stat().st_size
    assert not list(tmp_path.glob("img.tar.tmp-*"))
    files = _read_archive(out)
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}

    index = json.loads(files["index.json"])
    assert index["schemaVersion"] == 2 and index["mediaType"] == oci.MEDIA_INDEX
    (desc,) = index["manifests"]
    assert desc["annotations"]["io.containerd.image.name"] == NAME
    assert desc["annotations"]["org.opencontainers.image.ref.name"] == "1.2.3"
    assert desc["annotations"]["note"] == "n"
    assert desc["platform"] == {"architecture": "amd64", "os": "linux"}
    assert oci.read_index(out) == index

    # Every blob is named by the sha256 of its bytes.
    for name, data in files.items():
        if name.startswith("blobs/sha256/") and data:
            assert name.rsplit("/", 1)[1] == hashlib.sha256(data).hexdigest()

    manifest_bytes = _blob(files, desc["digest"])
    assert desc["size"] == len(manifest_bytes) and _sha(manifest_bytes) == desc["digest"] == written.manifest_digest
    manifest = json.loads(manifest_bytes)
    assert manifest["mediaType"] == oci.MEDIA_MANIFEST and manifest["annotations"] == {"note": "n"}
    config_bytes = _blob(files, manifest["config"]["digest"])
    assert manifest["config"]["size"] == len(config_bytes) and manifest["config"]["mediaType"] == oci.MEDIA_CONFIG
    config = json.loads(config_bytes)
    assert config["architecture"] == "amd64" and config["os"] == "linux"
    assert config["config"]["Entrypoint"] == ["/usr/local/bin/tool"] and config["config"]["Cmd"] == ["--help"]
    assert config["config"]["Env"] == ["PATH=/usr/bin", "A=b"] and config["config"]["WorkingDir"] == "/opt"
    assert config["config"]["Labels"] == {"x": "y"}
    assert [h["created_by"] for h in config["history"]] == ["base", "tool"]

    plain, gz = manifest["layers"]
    assert plain["mediaType"] == oci.MEDIA_LAYER and gz["mediaType"] == oci.MEDIA_LAYER_GZIP
    plain_blob, gz_blob = _blob(files, plain["digest"]), _blob(files, gz["digest"])
    assert plain["size"] == len(plain_blob) and gz["size"] == len(gz_blob)
    # diff_ids: sha256 of the uncompressed tar (the plain layer's digest; the gzip layer's content).
    assert config["rootfs"] == {"type": "layers", "diff_ids": [_sha(plain_blob), _sha(gzip.decompress(gz_blob))]}
    assert [la.diff_id for la in written.layers] == config["rootfs"]["diff_ids"]

    m1 = {m.name: m for m in _layer_members(plain_blob)}
    assert list(m1) == ["etc", "etc/motd", "tmp"]
    assert m1["tmp"].isdir() and m1["tmp"].mode == 0o1777
    m2 = _layer_members(gz_blob, gz=True)
    names = [m.name for m in m2]
    assert names == sorted(names) == ["opt", "opt/data.bin", "usr", "usr/bin", "usr/bin/tool", "usr/local",
                                      "usr/local/bin", "usr/local/bin/tool"]
    by = {m.name: m for m in m2}
    assert by["usr/local/bin/tool"].mode == 0o750 and by["opt/data.bin"].mode == 0o600
    assert by["usr/bin/tool"].issym() and by["usr/bin/tool"].linkname == "/usr/local/bin/tool"
    assert all(m.uid == 0 and m.gid == 0 and m.uname == "" and m.mtime == oci.FIXED_MTIME for m in m2)
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(gz_blob))) as tf:
        assert tf.extractfile("opt/data.bin").read() == (host_files / "data.bin").read_bytes()


def test_deterministic(tmp_path: Path, host_files: Path):
    cfg = oci.ImageConfig(cmd=["sh"])
    a = oci.write_image(tmp_path / "a.tar", NAME, _layers(host_files), cfg)
    layers = _layers(host_files)
    layers[1].entries.reverse()  # order of entries does not matter
    b = oci.write_image(tmp_path / "b.tar", NAME, layers, cfg)
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    assert a.manifest_digest == b.manifest_digest


def test_shared_layer_has_one_digest(tmp_path: Path, host_files: Path):
    shared = [oci.file("usr/local/bin/tool", host_files / "tool")]
    one = oci.write_image(tmp_path / "1.tar", "localhost/one:1", [oci.Layer(shared), [oci.content("a", "1")]],
                          oci.ImageConfig())
    two = oci.write_image(tmp_path / "2.tar", "localhost/two:2", [oci.Layer(list(shared)), [oci.content("b", "2")]],
                          oci.ImageConfig())
    assert one.layers[0].digest == two.layers[0].digest
    assert one.layers[1].digest != two.layers[1].digest
    # The same layer twice in one image is stored once.
    dup = oci.write_image(tmp_path / "3.tar", "localhost/dup:3", [shared, shared], oci.ImageConfig())
    blobs = [n for n in _read_archive(tmp_path / "3.tar") if n.startswith("blobs/sha256/") and len(n) > 14]
    assert dup.layers[0].digest == dup.layers[1].digest and len(blobs) == 3  # layer, config, manifest


def test_keep_mtime_and_tree(tmp_path: Path):
    src = tmp_path / "tree"
    (src / "pkg" / "__pycache__").mkdir(parents=True)
    (src / "pkg" / "mod.py").write_text("x = 1\n")
    (src / "pkg" / "__pycache__" / "mod.pyc").write_bytes(b"pyc")
    (src / "skip").mkdir()
    (src / "skip" / "big").write_bytes(b"x" * 10)
    (src / "link").symlink_to("pkg/mod.py")
    os.utime(src / "pkg" / "mod.py", (1_600_000_000, 1_600_000_000))
    entries = oci.tree("usr/lib/t", src, exclude=lambda rel: rel == "skip", keep_mtime=True)
    by = {e.path: e for e in entries}
    assert "usr/lib/t/skip" not in by and "usr/lib/t/skip/big" not in by
    assert by["usr/lib/t/link"].kind == "symlink" and by["usr/lib/t/link"].target == "pkg/mod.py"
    assert by["usr/lib/t/pkg/mod.py"].mtime == 1_600_000_000
    oci.write_image(tmp_path / "t.tar", "localhost/t:1", [entries], oci.ImageConfig())
    files = _read_archive(tmp_path / "t.tar")
    index = json.loads(files["index.json"])
    manifest = json.loads(_blob(files, index["manifests"][0]["digest"]))
    members = {m.name: m for m in _layer_members(_blob(files, manifest["layers"][0]["digest"]))}
    assert members["usr/lib/t/pkg/mod.py"].mtime == 1_600_000_000
    assert members["usr/lib"].mtime == oci.FIXED_MTIME  # implied parents get the fixed mtime


@pytest.mark.parametrize("make, message", [
    (lambda src: [oci.content("a/../b", "x")], "'..'"),
    (lambda src: [oci.content("/", "x")], "empty"),
    (lambda src: [oci.content("a", "x"), oci.directory("a")], "given twice"),
    (lambda src: [oci.symlink("lib", "usr/lib"), oci.content("lib/x", "1")], "not a directory"),
    (lambda src: [oci.file("x", src / "missing")], "cannot be read"),
    (lambda src: [oci.file("x", src)], "not a regular file"),
    (lambda src: ["not an entry"], "not an Entry"),
])
def test_bad_entries(tmp_path: Path, make, message):
    out = tmp_path / "bad.tar"
    with pytest.raises(oci.OciError, match=re.escape(message)):
        oci.write_image(out, NAME, [make(tmp_path)], oci.ImageConfig())
    assert not out.exists() and not list(tmp_path.glob("bad.tar.tmp-*"))


@pytest.mark.parametrize("name", ["busybox", "busybox:1", "localhost/a@sha256:" + "0" * 64, "localhost/A:1",
                                  "localhost/a:", "localhost/a b:1"])
def test_bad_names(tmp_path: Path, name):
    with pytest.raises(oci.OciError):
        oci.write_image(tmp_path / "x.tar", name, [[oci.content("a", "1")]], oci.ImageConfig())
    assert not list(tmp_path.iterdir())


def test_no_layers(tmp_path: Path):
    with pytest.raises(oci.OciError, match="at least one layer"):
        oci.write_image(tmp_path / "x.tar", NAME, [], oci.ImageConfig())


def test_existing_archive_survives_a_failed_write(tmp_path: Path, host_files: Path):
    out = tmp_path / "img.tar"
    oci.write_image(out, NAME, _layers(host_files), oci.ImageConfig())
    before = out.read_bytes()
    with pytest.raises(oci.OciError):
        oci.write_image(out, NAME, [[oci.file("x", host_files / "missing")]], oci.ImageConfig())
    assert out.read_bytes() == before and not list(tmp_path.glob("img.tar.tmp-*"))


def test_streams_large_layers(tmp_path: Path, monkeypatch):
    """A 256 MiB file goes through with little memory; progress lines come while it is written."""
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(256 << 20)  # sparse: no disk, same bytes to hash
    monkeypatch.setattr(oci, "_PROGRESS_EVERY", 64 << 20)
    lines: list[str] = []
    tracemalloc.start()
    try:
        written = oci.write_image(tmp_path / "big.tar", NAME, [[oci.file("data/big", big)]], oci.ImageConfig(),
                                  progress=lines.append)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, f"peak Python allocations {peak / 2**20:.0f} MiB"
    assert len(lines) >= 3 and "GiB written" in lines[0]
    # Independent check of the blob digest, streaming through tarfile.
    with tarfile.open(tmp_path / "big.tar") as tf:
        member = tf.getmember("blobs/sha256/" + written.layers[0].digest.split(":", 1)[1])
        h = hashlib.sha256()
        f = tf.extractfile(member)
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    assert "sha256:" + h.hexdigest() == written.layers[0].digest == written.layers[0].diff_id
    assert member.size == written.layers[0].size > 256 << 20


def test_blob_header_past_8_gib():
    """Blob sizes past ustar's 8 GiB limit use the GNU base-256 field, still one 512-byte block."""
    size = 9 << 30
    header = oci._header("blobs/sha256/" + "a" * 64, size)
    assert len(header) == 512
    assert tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape").size == size


# --------------------------------------------------------------------------------------------
# ELF closure


def _ldd(path: str) -> set[str]:
    out = subprocess.run(["ldd", path], capture_output=True, text=True, check=True).stdout
    found = set()
    for line in out.splitlines():
        m = re.search(r"=> (/\S+)", line) or re.match(r"\s*(/\S+)", line)
        if m:
            found.add(os.path.realpath(m.group(1)))
    return found


@pytest.mark.parametrize("binary", ["/usr/sbin/xtables-nft-multi", "/usr/bin/ssh", "/usr/bin/tar"])
def test_library_closure_matches_ldd(binary):
    if not os.path.isfile(binary) or shutil.which("ldd") is None:
        pytest.skip(f"{binary} or ldd not on this machine")
    closure = oci.library_closure([binary])
    assert {str(p) for p in closure.values()} == _ldd(binary)
    info = oci.read_elf(binary)
    assert info.interpreter in closure  # the loader at the path the binary names
    assert all(p.startswith(("/lib", "/usr/lib")) for p in closure)


def test_library_closure_relocates_and_skips_provided(tmp_path: Path):
    """Libraries outside the default directories go to /usr/lib/x86_64-linux-gnu; provided trees
    and files are followed but left out; unknown names raise unless optional or collected."""
    import sys

    exe = os.path.realpath(sys.executable)
    info = oci.read_elf(exe)
    if info is None or not info.needed:
        pytest.skip("this Python is not a dynamically linked ELF file")
    closure = oci.library_closure([exe])
    assert set(map(str, closure.values())) == _ldd(exe)
    provided = oci.library_closure([exe], provided=["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu"])
    assert all(not p.startswith(("/lib/x86_64", "/usr/lib/x86_64")) or p.startswith(oci.IMAGE_LIB_DIR)
               for p in provided)
    libpython = next((n for n in info.needed if n.startswith("libpython")), None)
    if libpython:
        host = _ldd(exe)
        lp = next(p for p in host if Path(p).name.startswith("libpython"))
        if not lp.startswith(("/lib/", "/usr/lib/")):
            assert f"{oci.IMAGE_LIB_DIR}/{libpython}" in closure


def test_library_closure_missing(tmp_path: Path):
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed: cannot make an ELF file that needs a missing library")
    (tmp_path / "lib.c").write_text("int f(void) { return 1; }\n")
    (tmp_path / "main.c").write_text("int f(void); int main(void) { return f(); }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", tmp_path / "libmlplatmissing.so", tmp_path / "lib.c"], check=True)
    subprocess.run(["gcc", "-o", tmp_path / "main", tmp_path / "main.c", f"-L{tmp_path}", "-lmlplatmissing"],
                   check=True)
    (tmp_path / "libmlplatmissing.so").unlink()
    with pytest.raises(oci.OciError, match="libmlplatmissing.so"):
        oci.library_closure([tmp_path / "main"])
    assert oci.library_closure([tmp_path / "main"], optional=["libmlplatmissing.so"])
    missing: list = []
    oci.library_closure([tmp_path / "main"], missing=missing)
    assert missing == [(str(tmp_path / "main"), "libmlplatmissing.so")]


def test_read_elf_static_and_non_elf(tmp_path: Path):
    (tmp_path / "text").write_text("not elf")
    assert oci.read_elf(tmp_path / "text") is None
    (tmp_path / "elf32").write_bytes(b"\x7fELF\x01\x01" + b"\0" * 58)
    with pytest.raises(oci.OciError, match="64-bit"):
        oci.read_elf(tmp_path / "elf32")
    for static in ("/usr/bin/busybox", "/bin/busybox", "/usr/bin/catatonit"):
        if os.path.isfile(static):
            info = oci.read_elf(static)
            assert info.needed == () and info.interpreter is None
            assert oci.library_closure([static]) == {}
            break
