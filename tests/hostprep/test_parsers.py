"""The parsers and renderers of mlplat.hostprep against recorded real outputs (tests/fixtures/hostprep)."""

from __future__ import annotations

import pytest

from mlplat.hostprep import containerd, disks, mirrors, network, nvidia, packages
from mlplat.hostprep.kernel import parse_sysctl
from mlplat.hostprep.swap import fstab_without_swap, parse_proc_swaps

from .fakes import captured, recorded


@pytest.mark.parametrize("name, change, detail", [
    ("growpart-CHANGED.rhel7-lvm-azure.txt", True, (132161536, 199272414)),
    ("growpart-CHANGED.sles-azure.txt", True, (59762655, 97511391)),
    ("growpart-NOCHANGE.fudge.sda2.txt", False, "could only be grown by 2015 [fudge=2048]"),
    ("growpart-NOCHANGE.new-format-bytes.nvme0n1p2.txt", False, "it cannot be grown"),
    ("growpart-NOCHANGE.old-format.nvme0n1p2.txt", False, "it cannot be grown"),
])
def test_growpart(name, change, detail):
    g = disks.parse_growpart(recorded(f"storage/{name}"))
    assert g["change"] is change
    if change:
        assert (g["old_size"], g["new_size"]) == detail and g["done"]
    else:
        assert detail in g["reason"]


def test_lvm_json_and_sizes():
    rows = disks.parse_lvm_json(recorded("storage/pvs-and-pvs-reportformat-json.al2023.amazon-linux-2023-698.txt"), "pv")
    assert rows == [{"pv_name": "/dev/sdb", "vg_name": "", "pv_fmt": "lvm2", "pv_attr": "---",
                     "pv_size": "8.00g", "pv_free": "8.00g"}]
    assert disks.lvm_size("8.00g") == 8 << 30 and disks.lvm_size("<9.00g") == 9 << 30
    assert disks.lvm_size("8589934592") == 8 << 30
    assert disks.split_partition("/dev/nvme0n1p2") == ("/dev/nvme0n1", 2)
    assert disks.split_partition("/dev/sda4") == ("/dev/sda", 4)
    # xfs_growfs prints the xfs_info table: data bsize=4096 blocks=524288 -> 2 GiB
    assert disks.parse_fs_bytes(recorded("storage/lvresize-r.xfs.rhel7-azure.txt"), "xfs") == 2 << 30


def test_nmcli():
    rows = network.parse_nmcli_con_show(recorded("networkmanager/nmcli-conn-show.bridge.txt"))
    assert [(r["name"], r["device"]) for r in rows] == [("enp0s3", "enp0s3"), ("virbr0", "virbr0"), ("test-net-1", None)]
    team = network.parse_nmcli_con_show(recorded("networkmanager/nmcli-conn-show.rhel7-team.txt"))
    assert team and all(len(r["uuid"]) == 36 for r in team)  # the version-mismatch warning line is skipped
    dev = network.parse_nmcli_dev_show(recorded("networkmanager/nmcli-dev-show.single-em3.txt"))["em3"]
    assert dev["GENERAL.CONNECTION"] == "em3" and dev["IP4.ADDRESS"] == ["10.16.184.98/22"]
    assert dev["IP4.GATEWAY"] == "10.16.187.254" and len(dev["IP4.DNS"]) == 3
    many = network.parse_nmcli_dev_show(recorded("networkmanager/nmcli-dev-show.rhel7-bridge-vxlan.txt"))
    assert len(many) >= 3


def test_repolists():
    ids = mirrors.parse_repolist(recorded("rpm-dnf/dnf-repolist.rhel8.txt"))
    assert "rhel-8-for-x86_64-baseos-rpms" in ids and "packages-microsoft-com-prod" in ids
    assert "Repository" not in " ".join(ids)  # the warning above the table is not a repo
    ids7 = mirrors.parse_repolist(recorded("rpm-dnf/yum-repolist.rhel7.txt"))
    assert ids7 == ["rhel-7-server-rpms", "rhel-7-server-satellite-6.1-rpms", "rhel-7-server-satellite-capsule-6.1-rpms",
                    "rhel-server-rhscl-7-rpms"]


def test_package_listings():
    pol = packages.parse_apt_policy(captured("debian12-lab/apt-cache-policy.containerd.debian12.txt"))
    assert pol["containerd"]["installed"] == pol["containerd"]["candidate"] == "1.6.20~ds1-1+deb12u3"
    assert packages.parse_apt_policy(captured("debian12-lab/apt-cache-policy.linux-headers-missing.debian12.txt")) == {}
    excerpt = packages.parse_apt_policy(recorded("apt-dpkg/apt-cache-policy.kubeadm.grep-A1.xenial-repo.k8s-69497.txt"))
    assert excerpt[""]["candidate"] == "1.12.1-02" and "1.11.3-00" in excerpt[""]["versions"]
    dq = packages.parse_dpkg_query(recorded("apt-dpkg/dpkg-query-W-f.pkg-ver-arch-status.ohai.txt"))
    assert dq["systemd-timesyncd"]["status"] == "config-files"
    assert "systemd-timesyncd" not in packages.dpkg_installed(recorded("apt-dpkg/dpkg-query-W-f.pkg-ver-arch-status.ohai.txt"))
    assert packages.dpkg_installed(captured("debian12-lab/dpkg-query.debian12.txt")) == {
        "containerd": "1.6.20~ds1-1+deb12u3", "kmod": "30+20221128-1", "runc": "1.1.5+ds1-1+deb12u1"}
    rpms = packages.parse_rpm_qa(recorded("rpm-dnf/rpm-qa-qf.name-epoch-ver-rel-installtime-arch.ohai.txt"))
    assert [packages.rpm_evr(p) for p in rpms["kernel"]] == ["3.10.0-862.2.3.el7", "3.10.0-862.el7"]
    rows = packages.parse_yum_list(recorded("rpm-dnf/yum-list-installed.kernel-mismatch.centos7.ansible-role-nvidia-driver-18.txt"))
    by = {r["name"]: r["evr"] for r in rows}
    assert by["kernel"] == "3.10.0-957.el7" and by["kernel-devel"] == "3.10.0-1127.18.2.el7"
    assert {r["section"] for r in rows} == {"installed"}


def test_versions_and_streams():
    assert packages.parse_containerd_version(recorded("containerd/containerd-version.v1.7.7.txt")) == "1.7.7"
    assert packages.parse_containerd_version(captured("debian12-lab/containerd-version.debian12.txt")) == "1.6.20"
    streams = nvidia.parse_dnf_module_streams(recorded("rpm-dnf/dnf-module-list.nvidia-driver.rhel8.precompiled-kmod-52.txt"))
    assert streams == ["latest", "latest-dkms", "open-dkms"]
    assert nvidia.pick_stream(streams, "580") is None
    assert nvidia.pick_stream(["580-dkms", "580-open"], "580") == "580-dkms"


def test_sysctl_and_swap():
    assert parse_sysctl(captured("debian12-lab/sysctl.k8s-keys.ip_forward-0.txt")) == {
        "net.bridge.bridge-nf-call-iptables": "1", "net.bridge.bridge-nf-call-ip6tables": "1", "net.ipv4.ip_forward": "0"}
    assert parse_proc_swaps(captured("debian12-lab/proc-swaps.no-swap.txt")) == []
    fstab = "# /etc/fstab\n/dev/sda1 / ext4 defaults 0 1\n/swap.img none swap sw 0 0\n#/old none swap sw 0 0\n"
    out = fstab_without_swap(fstab)
    assert out.splitlines()[2] == "#mlplat-swapoff# /swap.img none swap sw 0 0"
    assert fstab_without_swap(out) == out  # already commented: unchanged


@pytest.mark.parametrize("major, name", [(1, "v2-systemd"), (2, "v3-systemd")])
def test_containerd_files_are_byte_identical_to_nvidia_ctk(major, name):
    """config.toml as mlplat writes it is what nvidia-ctk 1.18.0 leaves (so running it changes nothing),
    and the drop-in mlplat writes without nvidia-ctk is the one nvidia-ctk writes."""
    pause = "registry.k8s.io/pause:3.10.1"
    assert containerd.render_config(major, pause, True) == captured(f"nvidia-ctk/{name}.config.toml")
    assert containerd.render_nvidia_dropin(major, pause, True) == captured(f"nvidia-ctk/{name}.99-nvidia.toml")
    assert containerd.dropin_default_runtime(captured(f"nvidia-ctk/{name}.99-nvidia.toml")) == (
        "nvidia", "/usr/bin/nvidia-container-runtime")
    # nvidia-ctk 1.18.0 on an empty config: the runtime without SystemdCgroup, still the default
    assert containerd.dropin_default_runtime(captured("nvidia-ctk/empty.99-nvidia.toml"))[0] == "nvidia"


def test_recorded_nvidia_ctk_dry_run_is_read_as_default():
    text = recorded("containerd/nvidia-ctk-runtime-configure.containerd.dry-run.empty-config.txt")
    toml = text[text.index("version = 2"):]
    assert containerd.dropin_default_runtime(toml) == (None, "/usr/bin/nvidia-container-runtime")


def test_docker_daemon_json_matches_nvidia_ctk():
    assert containerd.docker_daemon_json(captured("nvidia-ctk/docker-existing.input.json"), True) == \
        captured("nvidia-ctk/docker-existing.daemon.json")
    # from nothing, mlplat also sets the cgroup driver the params ask for
    import json

    assert json.loads(containerd.docker_daemon_json(None, False))["exec-opts"] == ["native.cgroupdriver=cgroupfs"]
    assert json.loads(captured("nvidia-ctk/docker-empty.daemon.json"))["default-runtime"] == "nvidia"


def test_containerd_reads_the_dropin():
    """containerd 1.6.20 (Debian 12) merged mlplat's config.toml and the conf.d drop-in: nvidia is the default."""
    dump = captured("debian12-lab/containerd-config-dump.debian12.with-nvidia-dropin.toml")
    assert 'imports = ["/etc/containerd/config.toml", "/etc/containerd/conf.d/99-nvidia.toml"]' in dump
    assert 'default_runtime_name = "nvidia"' in dump and 'sandbox_image = "registry.k8s.io/pause:3.10.1"' in dump


def test_apt_sources_renderers():
    d = mirrors.debian_sources("http://mirror.example.com/debian/", "bookworm")
    assert "URIs: http://mirror.example.com/debian\nSuites: bookworm bookworm-updates\n" in d
    assert "URIs: http://mirror.example.com/debian-security\nSuites: bookworm-security\n" in d
    u = mirrors.ubuntu_sources("http://mirror.example.com/ubuntu", "jammy")
    assert "Suites: jammy jammy-updates jammy-backports jammy-security" in u
    assert mirrors.comment_out_sources_list("deb http://x jammy main\n# c\n") == \
        "# disabled by mlplat (see sources.list.d): deb http://x jammy main\n# c\n"
