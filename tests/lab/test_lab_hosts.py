"""The lab's SSH hosts for real: namespaces, overlays, pinned keys, idempotent up, clean down, and
the machine's own /etc left untouched by whatever runs on a lab host."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml
from mlplat.hosts import HostPool, known_hosts_name
from mlplat.lab import hosts as lab
from mlplat.params import load_params

pytestmark = pytest.mark.lab_hosts


def tree_digest(root: Path) -> str:
    """A digest of a directory tree: names, types, modes, file contents and link targets."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames) + dirnames:
            p = Path(dirpath) / name
            try:
                st = p.lstat()
            except OSError:
                continue
            h.update(f"{p}\0{st.st_mode:o}\0".encode())
            if p.is_symlink():
                h.update(os.readlink(p).encode())
            elif p.is_file():
                try:
                    h.update(hashlib.sha256(p.read_bytes()).digest())
                except OSError:
                    h.update(b"unreadable")
    return h.hexdigest()


def running_with(text: str) -> list[int]:
    """Pids of live (not zombie) processes whose command line contains `text`."""
    out = []
    for p in Path("/proc").iterdir():
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (p / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if p.name.isdigit() and text in cmd and state != "Z":
            out.append(int(p.name))
    return out


def test_up_writes_a_valid_params_file(lab_hosts):
    params = load_params(lab_hosts.params_path)
    assert params.site == "lab"
    assert [h.name for h in params.hosts] == ["lab-1", "lab-2", "lab-3"]
    assert params.hosts[0].roles == ["control-plane", "worker"] and params.hosts[1].roles == ["worker"]
    assert all(h.gpus == 0 for h in params.hosts)
    assert params.ssh.user == "root" and params.ssh.connect_timeout == 5
    assert Path(params.ssh.key_file).is_absolute() and Path(params.ssh.known_hosts).is_absolute()
    assert oct(Path(params.ssh.key_file).stat().st_mode & 0o777) == "0o600"
    assert params.lab.state_dir == str(lab_hosts.state_dir) and params.lab.nodes == "kwok"
    pinned = [ln.split()[0] for ln in Path(params.ssh.known_hosts).read_text().splitlines() if not ln.startswith("#")]
    assert pinned == [known_hosts_name(h.address, params.ssh.port) for h in params.hosts]


def test_status_reports_every_host(lab_hosts):
    lab_hosts.ensure_up()
    st = lab.status(lab_hosts.state_dir)
    assert [s["name"] for s in st] == lab_hosts.names
    assert all(s["ok"] and s["running"] and s["listening"] and s["pid"] for s in st)


def test_up_again_keeps_running_hosts_starts_missing_keeps_foreign_keys(lab_hosts):
    lab_hosts.ensure_up()
    data = yaml.safe_load(lab_hosts.params_path.read_text())
    data["kubernetes"] = {"existing_kubeconfig": str(lab_hosts.state_dir / "kubeconfig")}
    lab_hosts.params_path.write_text(yaml.safe_dump(data))
    before = {s["name"]: s["pid"] for s in lab.status(lab_hosts.state_dir)}
    pinned = (lab_hosts.state_dir / "known_hosts").read_text()
    lab.stop_host(lab_hosts.state_dir, "lab-2")
    assert not lab.status(lab_hosts.state_dir)[1]["running"]
    path = lab.up(lab_hosts.state_dir)  # count defaults to the lab's own
    after = {s["name"]: s["pid"] for s in lab.status(lab_hosts.state_dir)}
    assert path == lab_hosts.params_path
    assert after["lab-1"] == before["lab-1"] and after["lab-3"] == before["lab-3"]
    assert after["lab-2"] and after["lab-2"] != before["lab-2"]
    assert (lab_hosts.state_dir / "known_hosts").read_text() == pinned
    assert load_params(path).kubernetes.existing_kubeconfig == str(lab_hosts.state_dir / "kubeconfig")


def test_each_host_is_a_server_of_its_own(lab_pool, lab_hosts):
    tag = uuid.uuid4().hex
    out = {r.host: r.data["stdout"].split("\n") for r in lab_pool.sh(
        "hostname; cat /etc/hostname; cat /etc/machine-id; readlink /proc/self/ns/pid; "
        f"ls {lab_hosts.state_dir} 2>&1 | head -1; grep -c mlplat-lab /etc/hosts", "probe")}
    assert [v[0] for v in out.values()] == lab_hosts.names and [v[1] for v in out.values()] == lab_hosts.names
    assert len({v[2] for v in out.values()}) == 3  # machine ids differ
    # Each its own PID namespace (a count of processes would also count the sessions other tests keep open).
    own = os.readlink("/proc/self/ns/pid")
    assert len({v[3] for v in out.values()}) == 3 and own not in {v[3] for v in out.values()}, (own, out)
    assert all("No such file" in v[4] for v in out.values())  # private /tmp: the state dir is not visible
    assert all(v[5] == "3" for v in out.values())
    first = lab_hosts.names[0]
    assert lab_pool.sh(f"echo {tag} > /etc/mlplat-probe-{tag}", "write", hosts=[first])[0].ok
    seen = {r.host: r.data["exit"] for r in lab_pool.sh(f"grep -q {tag} /etc/mlplat-probe-{tag}", "read", check=False)}
    assert seen == {first: 0, lab_hosts.names[1]: 2, lab_hosts.names[2]: 2}
    assert not Path(f"/etc/mlplat-probe-{tag}").exists()


def _probe_deb(tmp: Path, name: str) -> Path:
    root = tmp / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "usr/share/doc" / name).mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: 1.0\nArchitecture: all\nMaintainer: mlplat tests <tests@mlplat.invalid>\n"
        "Description: probe package of the mlplat lab tests\n")
    (root / "DEBIAN/conffiles").write_text(f"/etc/{name}.conf\n")
    (root / f"etc/{name}.conf").write_text("probe=1\n")
    (root / "usr/share/doc" / name / "README").write_text("installed on one lab host only\n")
    deb = tmp / f"{name}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)], check=True, capture_output=True)
    return deb


@pytest.mark.slow
def test_machine_etc_untouched_by_writes_and_apt_installs_on_a_lab_host(lab_pool, lab_hosts, tmp_path):
    if subprocess.run(["which", "dpkg-deb"], capture_output=True).returncode:
        pytest.skip("dpkg-deb is not installed (Debian tooling)")
    name = "mlplat-lab-probe-" + uuid.uuid4().hex[:8]
    deb = _probe_deb(tmp_path, name)
    first, second = lab_hosts.names[0], lab_hosts.names[1]
    etc_before = tree_digest(Path("/etc"))
    dpkg_before = hashlib.sha256(Path("/var/lib/dpkg/status").read_bytes()).hexdigest()

    assert lab_pool.sh("echo 'written on a lab host' > /etc/motd.d-probe && sed -i '$a # probe' /etc/hosts",
                       "write /etc", hosts=[first])[0].ok
    lab_pool.connection(first).connection.put(str(deb), f"/tmp/{name}.deb")  # over SFTP
    r = lab_pool.sh(f"DEBIAN_FRONTEND=noninteractive apt-get install -y -q /tmp/{name}.deb", "apt install",
                    hosts=[first], timeout=300)[0]
    assert r.ok, r.data
    installed = {x.host: x.data["stdout"].strip() for x in lab_pool.sh(
        f"dpkg-query -W -f='${{Status}}' {name} 2>/dev/null; cat /etc/{name}.conf 2>/dev/null", "dpkg", check=False)}
    assert installed[first] == "install ok installedprobe=1"
    assert installed[second] == ""

    assert tree_digest(Path("/etc")) == etc_before, "the machine's /etc changed"
    assert hashlib.sha256(Path("/var/lib/dpkg/status").read_bytes()).hexdigest() == dpkg_before
    assert not Path(f"/etc/{name}.conf").exists() and not Path(f"/usr/share/doc/{name}").exists()
    assert subprocess.run(["dpkg-query", "-W", name], capture_output=True).returncode != 0


def test_down_leaves_nothing_running_or_mounted_and_up_resumes(tmp_path):
    state = tmp_path / "lab"
    mark = str(7000 + os.getpid() % 1000)
    path = lab.up(state, 2, port=2222, network=lab.free_network(2, port=2222, start=os.getpid() + 97))
    st = lab.status(state)
    assert all(s["ok"] and s["port"] == 2222 for s in st)
    pinned = (state / "known_hosts").read_text()
    assert f"[{st[0]['address']}]:2222 ssh-ed25519 " in pinned  # non-standard port form
    with HostPool.from_file(path) as pool:
        assert all(r.ok for r in pool.connect())
        # A daemon left behind on a host, and a file that must survive down/up.
        assert all(r.ok for r in pool.sh(f"setsid sleep {mark}00 >/dev/null 2>&1 < /dev/null & "
                                         "echo kept > /etc/mlplat-persist", "daemon"))
    assert lab.lab_mounts(state) and lab.lab_processes(state)
    lab.down(state)
    assert lab.lab_processes(state) == [] and lab.lab_mounts(state) == []
    assert not any(s["running"] or s["listening"] for s in lab.status(state))
    assert running_with(f"sleep {mark}00") == []
    findmnt = subprocess.run(["findmnt", "-rn", "-o", "TARGET,OPTIONS"], capture_output=True, text=True).stdout
    assert str(state) not in findmnt

    path = lab.up(state)  # resumes: same keys, same overlay contents
    assert (state / "known_hosts").read_text() == pinned
    with HostPool.from_file(path) as pool:
        assert [r.data["stdout"] for r in pool.sh("cat /etc/mlplat-persist", "persisted")] == ["kept\n", "kept\n"]
    lab.down(state, purge=True)
    assert not state.exists()


def test_state_dir_under_an_overlaid_tree_keeps_layers_outside(tmp_path, monkeypatch):
    layers_root = tmp_path / "layers"
    monkeypatch.setenv("MLPLAT_LAB_LAYERS", str(layers_root))
    state = Path("/opt") / f"mlplat-lab-test-{uuid.uuid4().hex[:8]}"
    try:
        path = lab.up(state, 1, network=lab.free_network(1, start=os.getpid() + 191))
        layers = Path(yaml.safe_load((state / lab.STATE_FILE).read_text())["layers"])
        assert layers.parent == layers_root and (layers / "lab-1" / "upper" / "etc").is_dir()
        with HostPool.from_file(path) as pool:
            assert pool.sh("touch /opt/from-the-lab-host", "write /opt")[0].ok
        assert not (Path("/opt") / "from-the-lab-host").exists()
    finally:
        lab.down(state, purge=True)
    assert not state.exists() and not layers_root.exists()


def test_refusals(tmp_path, monkeypatch):
    with pytest.raises(lab.LabError, match="loopback"):
        lab.up(tmp_path / "x", 1, network="10.0.0")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(lab.LabError, match="need root"):
        lab.up(tmp_path / "y", 1)
    assert not (tmp_path / "y").exists()


def test_regenerated_key_is_repinned_by_up(lab_hosts):
    lab_hosts.ensure_up()
    fp = lab.regenerate_host_key(lab_hosts.state_dir, "lab-3")
    assert lab.status(lab_hosts.state_dir)[2]["ok"]
    lab.up(lab_hosts.state_dir)
    line = next(ln for ln in (lab_hosts.state_dir / "known_hosts").read_text().splitlines()
                if ln.startswith(known_hosts_name(lab_hosts.addresses["lab-3"], lab_hosts.port) + " "))
    key_file = lab_hosts.state_dir / "hosts/lab-3/ssh/ssh_host_ed25519_key.pub"
    assert line.split()[2] == key_file.read_text().split()[1]
    got = subprocess.run(["ssh-keygen", "-lf", str(key_file)], capture_output=True, text=True).stdout.split()[1]
    assert got == fp
    t0 = time.monotonic()
    with HostPool.from_file(lab_hosts.params_path) as pool:
        assert all(r.ok for r in pool.connect())
    assert time.monotonic() - t0 < 15


def test_busy_port_22_falls_back_to_2222(tmp_path):
    import socket

    net = lab.free_network(1, start=os.getpid() + 313)
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind((f"{net}.1", 22))
    squatter.listen()
    state = tmp_path / "lab"
    try:
        path = lab.up(state, 1, network=net)
        assert load_params(path).ssh.port == 2222 and lab.status(state)[0]["ok"]
        with HostPool.from_file(path) as pool:
            assert pool.connect()[0].ok
    finally:
        lab.down(state, purge=True)
        squatter.close()
