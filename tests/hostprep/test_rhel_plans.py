"""Every step of phases 10 and 20, planned for a Rocky 9 and a CentOS 7 GPU host (no lab can run them
here). The hosts answer from recorded real outputs (tests/fixtures/hostprep/recorded, see SOURCES.md);
where no recording exists, the answer is built in the recorded format and the test says so.
The tests check the commands and the file contents of each plan, and that planning wrote nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mlplat.hostprep import containerd, disks, kernel, mirrors, network, nvidia, packages, security, swap, timesync
from mlplat.hostprep.base import Output, execute
from mlplat.report import hint_for

from .fakes import RecordedHost, captured, facts_for, recorded, target

PARAMS = Path(__file__).with_name("params-rhel.yaml")
ROCKY_KERNEL = "5.14.0-362.8.1.el9_3.x86_64"
CENTOS_KERNEL = "3.10.0-957.el7.x86_64"  # the running kernel of the recorded mismatch listing
# Built in `dnf list` format (same columns as the recorded yum listing): no dnf listing of kernel-devel
# is recorded.
ROCKY_KERNEL_DEVEL = f"Available Packages\nkernel-devel.x86_64   {ROCKY_KERNEL[:-7]}   baseos\n"
FSTAB = ("UUID=4f1d0c5e-0000-4000-8000-000000000001 /     xfs  defaults 0 0\n"
         "/dev/mapper/rootvg-swaplv               none  swap defaults 0 0\n")
PROC_SWAPS = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n/dev/dm-1                               partition\t4194300\t\t0\t\t-2\n"
SELINUX = "SELINUX=enforcing\nSELINUXTYPE=targeted\n"


def _common(h: RecordedHost) -> RecordedHost:
    return (h.answer(r"^sysctl ", captured("debian12-lab/sysctl.k8s-keys.ip_forward-0.txt"))
            .answer(r"getenforce", "Enforcing\n")
            .answer(r"firewall-cmd --state", "running\n")
            .answer(r"firewall-cmd --permanent --list-ports", "\n")
            .answer(r"systemctl is-enabled", Output("disabled\n", "", 1))
            .answer(r"systemctl is-active", Output("inactive\n", "", 3))
            .answer(r"/proc/filesystems|/sys/module/overlay", Output("", "", 1))
            .answer(r"/sys/module/br_netfilter", Output("", "", 1))
            .answer(r"^\[ -d /lib/modules/", Output(""))
            .answer(r"^\[ -d /sys/module/nouveau \]", Output(""))
            .answer(r"^\[ -b ", Output(""))
            .answer(r"^rpm -qa", recorded("rpm-dnf/rpm-qa-qf.name-epoch-ver-rel-installtime-arch.ohai.txt"))
            .answer(r"containerd --version|docker --version|containerd config dump", Output("", "not found", 127))
            .answer(r"^\[ -x /usr/bin/nvidia-container-runtime \]", Output("", "", 1)))


@pytest.fixture
def rocky9():
    h = RecordedHost("rocky9", files={
        "/etc/os-release": recorded("os-release/rocky-9.3.os-release"), "/etc/fstab": FSTAB,
        "/proc/sys/net/ipv4/ip_forward": "0\n",  # a real server: /proc/sys writable
        "/proc/swaps": PROC_SWAPS, "/etc/selinux/config": SELINUX,
        "/etc/docker/daemon.json": captured("nvidia-ctk/docker-existing.input.json"),
    }, tools={"firewall-cmd", "nmcli", "growpart", "dnf"})
    _common(h)
    h.answer(r"^dnf -q repolist --enabled", recorded("rpm-dnf/dnf-repolist.rhel8.txt"))
    h.answer(r"dnf -q --showduplicates list kernel-devel", ROCKY_KERNEL_DEVEL)
    h.answer(r"nmcli -t -f RUNNING general", "running\n")
    h.answer(r"^nmcli dev show em3", recorded("networkmanager/nmcli-dev-show.single-em3.txt"))
    h.answer(r"^nmcli -g ", "auto\n\n\n\n\n")  # a DHCP profile: method auto, the other fields empty
    h.answer(r"^findmnt ", "/dev/mapper/rootvg-rootlv xfs\n")
    h.answer(r"^growpart --dry-run /dev/sda 4", recorded("storage/growpart-CHANGED.rhel7-lvm-azure.txt"))
    h.answer(r"dnf -q module list nvidia-driver", recorded("rpm-dnf/dnf-module-list.nvidia-driver.rhel8.precompiled-kmod-52.txt"))
    facts = facts_for("os-release/rocky-9.3.os-release", ROCKY_KERNEL,
                      nics=[{"name": "em3", "addresses": ["10.16.184.98/22"]}])
    return h, target(PARAMS, "rocky9", facts, h)


@pytest.fixture
def centos7():
    h = RecordedHost("centos7", files={
        "/etc/os-release": recorded("os-release/centos-7.os-release"), "/etc/fstab": FSTAB,
        "/proc/sys/net/ipv4/ip_forward": "0\n",  # a real server: /proc/sys writable
        "/proc/swaps": "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n", "/etc/selinux/config": SELINUX,
    }, tools={"firewall-cmd", "growpart", "yum"})
    _common(h)
    h.answer(r"yum -q --showduplicates list kernel-devel",
             recorded("rpm-dnf/yum-list-installed.kernel-mismatch.centos7.ansible-role-nvidia-driver-18.txt"))
    h.answer(r"^grep -l -E .*yum.repos.d", "/etc/yum.repos.d/CentOS-Base.repo\n/etc/yum.repos.d/CentOS-SCLo-scl-rh.repo\n")
    h.answer(r"^findmnt ", "/dev/nvme0n1p2 xfs\n")
    h.answer(r"^growpart --dry-run /dev/nvme0n1 2", Output(recorded("storage/growpart-NOCHANGE.old-format.nvme0n1p2.txt"), "", 1))
    # xfs_growfs prints the xfs_info table; the recorded lvresize -r run holds one (2 GiB: 524288 x 4 KiB).
    h.answer(r"^xfs_info /", recorded("storage/lvresize-r.xfs.rhel7-azure.txt"))
    h.answer(r"^blockdev --getsize64", "2147483648\n")
    facts = facts_for("os-release/centos-7.os-release", CENTOS_KERNEL)
    return h, target(PARAMS, "centos7", facts, h)


def plan(t, planner, step="step"):
    r = execute(step, t, planner, apply=False)
    assert t.remote.writes == [], "plan mode wrote files"
    return r


# -- phase 10 -------------------------------------------------------------------------------------

def test_rocky9_static_ip_guarded(rocky9):
    h, t = rocky9
    r = plan(t, network.plan)
    assert r.changed and r.ok
    guard = r.data["files"][network.GUARD]
    assert ("nmcli con modify em3 ipv4.method manual ipv4.addresses 10.16.184.50/22,10.16.184.98/22 "
            "ipv4.gateway 10.16.187.254 ipv4.dns '10.16.36.29 10.11.5.19' ipv4.dns-search lab.example.com "
            "&& nmcli con up em3") in guard
    # the revert puts back what nmcli showed: a DHCP profile
    assert "nmcli con modify em3 ipv4.method auto ipv4.addresses '' ipv4.gateway ''" in guard
    assert "sleep 120" in guard and "if [ -e /run/mlplat-net.pending ]" in guard
    assert any("nohup setsid sh /run/mlplat-net-guard.sh" in c for c in r.data["commands"])
    assert "rm -f /run/mlplat-net.pending" in r.diff  # the confirmation after reconnecting


def test_rocky9_mirrors(rocky9):
    h, t = rocky9
    r = plan(t, mirrors.plan)
    repo = r.data["files"]["/etc/yum.repos.d/mlplat-mirror.repo"]
    assert "[mlplat-baseos]\nname=mlplat mirror: baseos (rocky 9)\nbaseurl=https://mirror.example.com/rocky/9/BaseOS/x86_64/os/\n" in repo
    assert "gpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-Rocky-9" in repo and "[mlplat-appstream]" in repo
    assert "baseurl=https://mirror.example.com/epel/9/Everything/$basearch/" in r.data["files"]["/etc/yum.repos.d/epel.repo"]
    # the enabled repositories come from a recorded `dnf repolist`: the BaseOS/AppStream ones are disabled
    assert r.data["commands"] == [
        "dnf config-manager --set-disabled rhel-8-for-x86_64-appstream-rpms rhel-8-for-x86_64-baseos-rpms",
        "dnf -q makecache"]


def test_centos7_mirrors_vault_with_eol_warning(centos7):
    h, t = centos7
    r = plan(t, mirrors.plan)
    base = r.data["files"]["/etc/yum.repos.d/CentOS-Base.repo"]
    assert "baseurl=https://vault.centos.org/7.9.2009/os/$basearch/" in base
    assert "baseurl=https://vault.centos.org/7.9.2009/updates/$basearch/" in base and "mirrorlist" not in base
    sed = r.data["commands"][0]
    assert sed.startswith("sed -i -e 's|^mirrorlist=|#mirrorlist=|'") and sed.endswith("/etc/yum.repos.d/CentOS-SCLo-scl-rh.repo")
    assert "https://vault.centos.org/7.9.2009" in sed
    assert r.data["commands"][-1] == "yum -q makecache fast"
    assert "baseurl=https://mirror.example.com/epel/7/$basearch/" in r.data["files"]["/etc/yum.repos.d/epel.repo"]
    assert "end of life" in r.message and "vault" in r.message
    # the failure it prevents: the recorded post-EOL yum error maps to the hint naming this step
    assert "10_host_prep" in hint_for(recorded("rpm-dnf/yum-mirrorlist-error.centos7-eol.excerpt.txt"))


def test_base_packages(rocky9, centos7):
    r9 = plan(rocky9[1], packages.plan_base)
    assert r9.data["commands"] == ["dnf -y install ca-certificates curl kmod iptables-nft conntrack-tools socat ethtool "
                                   "dnf-plugins-core iproute-tc tar"]
    r7 = plan(centos7[1], packages.plan_base)
    # the recorded rpm -qa (a CentOS 7 host) has none of them; yum-utils is the EL7 config-manager
    assert r7.data["commands"][0].startswith("yum -y install ca-certificates curl kmod iptables conntrack-tools")
    assert "yum-utils" in r7.data["commands"][0]


def test_kernel_headers(rocky9, centos7):
    r9 = plan(rocky9[1], packages.plan_kernel_headers)
    assert r9.data["commands"] == [f"dnf -y install kernel-devel-{ROCKY_KERNEL}"]
    r7 = plan(centos7[1], packages.plan_kernel_headers)
    # the recorded listing: kernel 3.10.0-957 running, kernel-devel 3.10.0-1127.18.2 installed
    assert not r7.ok
    assert "kernel headers mismatch" in r7.message and f"kernel-devel-{CENTOS_KERNEL}" in r7.message
    assert "installed: kernel-devel 3.10.0-1127.18.2.el7.x86_64" in r7.message
    assert "10_host_prep" in r7.hint


def test_time_sync(rocky9):
    r = plan(rocky9[1], timesync.plan)
    conf = r.data["files"]["/etc/chrony.conf"]
    assert conf.splitlines()[1:3] == ["server ntp1.example.com iburst", "server ntp2.example.com iburst"]
    assert r.data["commands"] == ["dnf -y install chrony", "systemctl enable chronyd && systemctl restart chronyd"]


def test_swap(rocky9):
    r = plan(rocky9[1], swap.plan)
    assert r.data["commands"] == ["swapoff -a", "systemctl daemon-reload"]
    assert r.data["files"]["/etc/fstab"].splitlines()[1] == "#mlplat-swapoff# /dev/mapper/rootvg-swaplv               none  swap defaults 0 0"
    assert r.data["files"]["/etc/fstab"].splitlines()[0] == FSTAB.splitlines()[0]


def test_modules_and_sysctl(rocky9):
    r = plan(rocky9[1], kernel.plan_modules)
    assert r.data["files"]["/etc/modules-load.d/k8s.conf"].splitlines()[1:] == ["overlay", "br_netfilter"]
    assert r.data["commands"] == ["modprobe overlay", "modprobe br_netfilter"]
    r = plan(rocky9[1], kernel.plan_sysctl)
    assert r.data["files"]["/etc/sysctl.d/99-kubernetes.conf"].splitlines()[1:] == [
        "net.bridge.bridge-nf-call-iptables = 1", "net.bridge.bridge-nf-call-ip6tables = 1", "net.ipv4.ip_forward = 1"]
    assert r.data["commands"] == ["sysctl -p /etc/sysctl.d/99-kubernetes.conf"]
    assert "net.ipv4.ip_forward=1 (now 0)" in r.message


def test_selinux_and_firewall(rocky9, centos7):
    r = plan(rocky9[1], security.plan_selinux)
    assert r.data["files"]["/etc/selinux/config"] == "SELINUX=permissive\nSELINUXTYPE=targeted\n"
    assert r.data["commands"] == ["setenforce 0"]
    r = plan(rocky9[1], security.plan_firewall)  # control plane: API server, etcd, kubelet, ...
    assert r.data["commands"] == [" && ".join(
        [f"firewall-cmd --permanent --add-port={p}" for p in
         ["6443/tcp", "2379-2380/tcp", "10250/tcp", "10257/tcp", "10259/tcp", "10256/tcp", "30000-32767/tcp", "8472/udp"]]
        + ["firewall-cmd --reload"])]
    r = plan(centos7[1], security.plan_firewall)  # a worker: no control-plane ports
    assert "6443/tcp" not in r.data["commands"][0] and "--add-port=10250/tcp" in r.data["commands"][0]


def test_disks_grow_and_noop(rocky9, centos7):
    r = plan(rocky9[1], disks.plan)  # recorded growpart: CHANGED on sda4 (an LVM PV with rootvg/rootlv)
    cmds = r.data["commands"]
    assert cmds[0] == "growpart /dev/sda 4" and cmds[1] == "pvresize /dev/sda4"
    assert "vgs --noheadings -o vg_free_count rootvg" in cmds[2] and "lvextend -r -l +100%FREE /dev/rootvg/rootlv" in cmds[2]
    assert "132161536 -> 199272414 sectors" in r.message or "can grow by" in r.message
    r = plan(centos7[1], disks.plan)  # recorded growpart NOCHANGE, xfs already the device's size
    assert r.ok and not r.changed and r.data["commands"] == []
    assert "it cannot be grown" in r.message and "xfs fills /dev/nvme0n1p2" in r.message


# -- phase 20 -------------------------------------------------------------------------------------

def test_nouveau(rocky9, centos7):
    h, t = rocky9
    r = plan(t, nvidia.plan_nouveau)
    assert r.data["files"]["/etc/modprobe.d/blacklist-nouveau.conf"].splitlines()[1:] == [
        "blacklist nouveau", "options nouveau modeset=0"]
    assert r.data["commands"] == ["dracut -f"]
    assert "nouveau is loaded" in t.state["reboot_reason"]


def test_repositories(rocky9, centos7):
    r = plan(rocky9[1], nvidia.plan_repos)
    cuda = r.data["files"]["/etc/yum.repos.d/cuda-rhel9-x86_64.repo"]
    assert "baseurl=https://mirror.example.com/cuda/repos/rhel9/x86_64\n" in cuda
    assert "gpgkey=https://mirror.example.com/cuda/repos/rhel9/x86_64/D42D0685.pub" in cuda
    assert "baseurl=https://nvidia.github.io/libnvidia-container/stable/rpm/$basearch" in \
        r.data["files"]["/etc/yum.repos.d/nvidia-container-toolkit.repo"]
    assert r.data["commands"] == ["dnf -q makecache"]
    r = plan(centos7[1], nvidia.plan_repos)
    assert "/etc/yum.repos.d/cuda-rhel7-x86_64.repo" in r.data["files"]
    assert r.data["commands"] == ["yum -q makecache fast"]


def test_driver_stream_from_recorded_module_list(rocky9, centos7):
    h, t = rocky9
    r = plan(t, nvidia.plan_driver)
    # the recorded CUDA repo offers only latest / latest-dkms / open-dkms streams: no 580 stream
    assert not r.ok and "no nvidia-driver stream for branch 580" in r.message
    assert "latest, latest-dkms, open-dkms" in r.message
    # built in the recorded format: a repo that has the branch's DKMS stream
    h.answer(r"dnf -q module list nvidia-driver$|dnf -q module list nvidia-driver 2>&1",
             "cuda-rhel9-x86_64\nName           Stream       Profiles              Summary\n"
             "nvidia-driver  580-dkms     default [d], fm, ks   Nvidia driver for 580-dkms branch\n")
    r = plan(t, nvidia.plan_driver)
    assert r.data["commands"] == ["dnf -y module install nvidia-driver:580-dkms"]
    assert t.state["reboot_reason"]
    r = plan(centos7[1], nvidia.plan_driver)
    assert r.data["commands"] == ["yum -y install nvidia-driver-branch-580"]


def test_cuda_and_toolkit(rocky9):
    r = plan(rocky9[1], nvidia.plan_cuda)
    assert r.data["commands"] == ["dnf -y install cuda-toolkit-13-0"]
    r = plan(rocky9[1], nvidia.plan_toolkit)
    assert r.data["commands"] == ["dnf -y install nvidia-container-toolkit-1.18.0 nvidia-container-toolkit-base-1.18.0 "
                                  "libnvidia-container-tools-1.18.0 libnvidia-container1-1.18.0"]


def test_containerd_install_from_docker_repo(rocky9, centos7):
    r = plan(rocky9[1], containerd.plan_install)
    assert r.data["files"]["/etc/yum.repos.d/docker-ce.repo"] == (
        "[docker-ce-stable]\nname=Docker CE Stable - $basearch\n"
        "baseurl=https://mirror.example.com/docker-ce/linux/centos/$releasever/$basearch/stable\n"
        "enabled=1\ngpgcheck=1\ngpgkey=https://mirror.example.com/docker-ce/linux/centos/gpg\n")
    assert r.data["commands"] == ["dnf -q makecache", "dnf -y install containerd.io-2.1.4",
                                  "systemctl enable --now containerd"]
    r = plan(centos7[1], containerd.plan_install)
    assert r.data["commands"][:2] == ["yum -q makecache fast", "yum -y install containerd.io-2.1.4"]


def test_containerd_config_is_what_nvidia_ctk_leaves(rocky9):
    h, t = rocky9
    r = plan(t, containerd.plan_configure)
    # containerd 2.x (docker-repo pin 2.1.4): config version 3, the path of 2.x, pause 3.10.1 for 1.34
    assert r.data["files"]["/etc/containerd/config.toml"] == captured("nvidia-ctk/v3-systemd.config.toml")
    assert "[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.runc.options]\n            SystemdCgroup = true" \
        in r.data["files"]["/etc/containerd/config.toml"]


def test_nvidia_runtime_dropin(rocky9):
    h, t = rocky9
    r = plan(t, containerd.plan_nvidia_runtime)
    # no nvidia-ctk yet: mlplat writes the drop-in nvidia-ctk 1.18.0 writes (captured), byte for byte
    assert r.data["files"]["/etc/containerd/conf.d/99-nvidia.toml"] == captured("nvidia-ctk/v3-systemd.99-nvidia.toml")
    assert "nvidia-container-toolkit missing" in r.message
    h.tools.add("nvidia-ctk")
    r = plan(t, containerd.plan_nvidia_runtime)
    assert r.data["commands"][0] == ("nvidia-ctk runtime configure --runtime=containerd --set-as-default "
                                     "--config=/etc/containerd/config.toml "
                                     "--drop-in-config=/etc/containerd/conf.d/99-nvidia.toml")
    # converged when the drop-in (written by either) makes nvidia the default and config.toml imports it
    h.files["/etc/containerd/conf.d/99-nvidia.toml"] = captured("nvidia-ctk/v3-systemd.99-nvidia.toml")
    h.files["/etc/containerd/config.toml"] = captured("nvidia-ctk/v3-systemd.config.toml")
    r = plan(t, containerd.plan_nvidia_runtime)
    assert r.ok and not r.changed and "default runtime nvidia" in r.message


def test_docker_legacy_daemon_json(rocky9):
    r = plan(rocky9[1], containerd.plan_docker)
    assert r.data["files"]["/etc/docker/daemon.json"] == captured("nvidia-ctk/docker-existing.daemon.json")
    assert "dnf -y install docker-ce docker-ce-cli" in r.data["commands"]


def test_reboot_and_verify_plans(rocky9):
    h, t = rocky9
    plan(t, nvidia.plan_nouveau)  # nouveau loaded: a reboot is needed
    r = plan(t, nvidia.plan_reboot)
    assert r.changed and "would reboot (nouveau is loaded" in r.message
    assert "systemctl reboot; wait for SSH and a new boot id (at most 900s)" in r.diff
    r = plan(t, nvidia.plan_verify_host)
    assert r.skipped and "after the reboot" in r.message


def test_verify_host_parses_nvidia_smi(rocky9):
    h, t = rocky9
    h.answer(r"nvidia-smi --query-gpu", recorded("nvidia-smi/nvidia-smi-query-gpu.csv.1x-h100.all-fields.drv590.csv"))
    t.facts["pci_gpus"] = t.facts["pci_gpus"][:1]
    t.facts["gpu_count"] = 1
    r = plan(t, nvidia.plan_verify_host)
    assert r.ok and "1x NVIDIA H100 80GB HBM3, driver 590.48.01" in r.message
    assert "driver is not branch 580" in r.message  # params ask for R580; this host runs 590


def test_no_gpu_hosts_skip_the_driver_steps(rocky9):
    h, t = rocky9
    t.facts.update(gpu_count=0, pci_gpus=[])
    for planner in (nvidia.plan_nouveau, nvidia.plan_repos, nvidia.plan_driver, nvidia.plan_toolkit,
                    nvidia.plan_verify_host, nvidia.plan_verify_container, containerd.plan_nvidia_runtime):
        r = plan(t, planner)
        assert r.skipped and "no NVIDIA GPU" in r.message, (planner.__name__, r.message)


# -- the Debian family's own paths (Ubuntu 22.04 with netplan, planned) ---------------------------

def test_ubuntu_static_ip_with_netplan_and_apt_mirror(tmp_path):
    import yaml

    d = yaml.safe_load(PARAMS.read_text())
    d["disks"] = []
    d["hosts"] = [{"name": "ubuntu", "address": "10.0.0.5", "roles": ["control-plane"], "interface": "ens3",
                   "static_address": "10.0.0.50/24"}]
    d["network"]["gateway"] = "10.0.0.1"
    d["mirrors"]["apt"] = "http://mirror.example.com/ubuntu"
    params = tmp_path / "ubuntu.yaml"
    params.write_text(yaml.safe_dump(d))
    h = RecordedHost("ubuntu", files={"/etc/os-release": recorded("os-release/ubuntu-22.04.2.os-release"),
                                      "/etc/apt/sources.list": "deb http://archive.ubuntu.com/ubuntu jammy main\n"},
                     tools={"netplan"})
    h.answer(r"^ip -o -4 addr show dev ens3", "2: ens3    inet 10.0.0.5/24 brd 10.0.0.255 scope global ens3\n")
    facts = facts_for("os-release/ubuntu-22.04.2.os-release", "5.15.0-91-generic", gpus=False,
                      nics=[{"name": "ens3", "addresses": ["10.0.0.5/24"]}])
    t = target(params, "ubuntu", facts, h)
    r = plan(t, network.plan)
    y = r.data["files"]["/etc/netplan/60-mlplat-static.yaml"]
    assert "    ens3:\n      dhcp4: false\n      addresses:\n        - 10.0.0.50/24\n        - 10.0.0.5/24\n" in y
    assert "          via: 10.0.0.1" in y
    guard = r.data["files"][network.GUARD]
    assert "netplan generate && netplan apply" in guard and "rm -f /etc/netplan/60-mlplat-static.yaml && netplan apply" in guard
    r = plan(t, mirrors.plan)
    assert "URIs: http://mirror.example.com/ubuntu\nSuites: jammy jammy-updates jammy-backports jammy-security\n" in \
        r.data["files"]["/etc/apt/sources.list.d/ubuntu.sources"]
    assert r.data["files"]["/etc/apt/sources.list"].startswith("# disabled by mlplat")
    assert r.data["commands"] == ["DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=a apt-get -q update"]
