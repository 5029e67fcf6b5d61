"""The facts parsers on real outputs: recorded ones from ../shared/fixtures/recorded (read in place,
see its SOURCES.md) and ones captured from the lab hosts (tests/hosts/data, see its README)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from mlplat.hosts import facts as F
from mlplat.report.results import StepResult

DATA = Path(__file__).parent / "data"

OS_RELEASE = {
    # file: (ID, VERSION_ID, family)
    "rocky-9.3.os-release": ("rocky", "9.3", "rhel"),
    "rocky-8.4.os-release": ("rocky", "8.4", "rhel"),
    "centos-7.os-release": ("centos", "7", "rhel"),
    "centos-stream-9.os-release": ("centos", "9", "rhel"),
    "almalinux-9.1.os-release": ("almalinux", "9.1", "rhel"),
    "almalinux-10.0.os-release": ("almalinux", "10.0", "rhel"),
    "rhel-8.7.os-release": ("rhel", "8.7", "rhel"),
    "rhel-9.6.os-release": ("rhel", "9.6", "rhel"),
    "ubuntu-22.04.2.os-release": ("ubuntu", "22.04", "debian"),
    "ubuntu-24.04.3.os-release": ("ubuntu", "24.04", "debian"),
}


@pytest.mark.parametrize("name", sorted(OS_RELEASE))
def test_os_release(recorded, name):
    got = F.parse_os_release((recorded / "os-release" / name).read_text())
    os_id, version, family = OS_RELEASE[name]
    assert (got["ID"], got["VERSION_ID"], got["family"]) == (os_id, version, family)
    assert got["PRETTY_NAME"] and '"' not in got["PRETTY_NAME"]


def test_os_family_from_id_like():
    assert F.os_family("linuxmint", "ubuntu debian") == "debian"
    assert F.os_family("ol", "fedora") == "rhel"
    assert F.os_family("opensuse-leap", "suse opensuse") == "opensuse-leap"


def test_lspci_nn_a100(recorded):
    devs = F.parse_lspci((recorded / "lspci/lspci-nn.a100-sxm4-40gb-and-80gb.torchruntime-15.txt").read_text())
    gpus = F.nvidia_gpus(devs)
    assert [(g["class"], g["vendor"], g["device"]) for g in gpus] == [("0302", "10de", "20b0"), ("0302", "10de", "20b2")]
    assert gpus[0]["description"] == "NVIDIA Corporation GA100 [A100 SXM4 40GB]"
    assert gpus[0]["slot"] == "07:00.0" and gpus[0]["rev"] == "a1"


def test_lspci_nnk_skips_detail_lines_and_audio_functions(recorded):
    devs = F.parse_lspci((recorded / "lspci/lspci-nnk.2x-rtx3090.club-3090-594.txt").read_text())
    assert len(devs) == 4  # two GPUs, two HDMI audio functions; Subsystem/driver lines and "--" skipped
    gpus = F.nvidia_gpus(devs)
    assert [g["slot"] for g in gpus] == ["05:00.0", "0a:00.0"]
    assert all(g["class"] == "0300" and g["class_name"] == "VGA compatible controller" for g in gpus)


def test_lspci_without_ids_finds_no_gpu(recorded):
    devs = F.parse_lspci((recorded / "lspci/lspci.grep-net.mellanox-connectx6dx.3fs-283.txt").read_text())
    assert len(devs) == 2 and devs[0]["class"] is None
    assert "ConnectX-6 Dx" in devs[0]["description"]
    assert F.nvidia_gpus(devs) == []


def test_lspci_sysfs_fallback_from_lab():
    sec = F.split_sections((DATA / "facts.lab-host.debian12.txt").read_text())
    devs = F.parse_lspci(sec["pci"])
    assert len(devs) == 6 and devs[0] == {"slot": "0000:00:00.0", "class": "0600", "class_name": None,
                                          "vendor": "8086", "device": "0d57", "description": "", "rev": None}
    assert F.nvidia_gpus(devs) == []


def test_nvidia_smi_csv_with_header_h100(recorded):
    rows = F.parse_nvidia_smi_csv(
        (recorded / "nvidia-smi/nvidia-smi-query-gpu.csv.1x-h100.all-fields.drv590.csv").read_text())
    assert len(rows) == 1
    r = rows[0]
    assert (r["index"], r["name"], r["driver_version"], r["memory_total_mib"]) == (0, "NVIDIA H100 80GB HBM3", "590.48.01", 81559)
    assert r["uuid"].startswith("GPU-")
    assert r["fan.speed"] is None  # "[N/A]"


def test_nvidia_smi_csv_with_header_p100_no_final_newline(recorded):
    rows = F.parse_nvidia_smi_csv(
        (recorded / "nvidia-smi/nvidia-smi-query-gpu.csv.1x-tesla-p100.netdata.csv").read_text())
    assert [r["name"] for r in rows] == ["Tesla P100-PCIE-16GB"]
    assert "memory.total" not in rows[0] and rows[0]["memory.reserved"] == "103" and rows[0]["fan.speed"] is None


def test_nvidia_smi_csv_noheader_in_the_facts_field_order(recorded):
    # The facts script asks for index,name,uuid,memory.total,driver_version with csv,noheader. No such
    # capture is recorded; this row is the H100 capture's own values, picked from its header's columns.
    text = (recorded / "nvidia-smi/nvidia-smi-query-gpu.csv.1x-h100.all-fields.drv590.csv").read_text()
    header, row = list(csv.reader(io.StringIO(text), skipinitialspace=True))[:2]
    keys = [F._field_key(h) for h in header]
    line = ", ".join(row[keys.index(f)] for f in F.NVIDIA_SMI_FIELDS)
    rows = F.parse_nvidia_smi_csv(line + "\n")
    assert rows == [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-00000000-0000-0000-0000-000000000000",
                     "memory.total": "81559 MiB", "driver_version": "590.48.01", "memory_total_mib": 81559}]


def test_nvidia_smi_error_text_gives_no_rows():
    assert F.parse_nvidia_smi_csv("") == []
    assert F.parse_nvidia_smi_csv("No devices were found\n") == []


def test_lsblk_pairs_rhel6(recorded):
    devs = F.parse_lsblk((recorded / "storage/lsblk-P-o-all.rhel6.txt").read_text())
    by = {d["name"]: d for d in devs}
    assert by["sda"]["type"] == "disk" and by["sda"]["size_gib"] == 149.0 and by["sda"]["model"] == "WDC WD1600JS-75N"
    assert by["vg_trex-lv_root"]["mountpoints"] == ["/"] and by["vg_trex-lv_root"]["kname"] == "dm-0"
    assert by["sda2"]["size_gib"] == 148.5 and by["sda1"]["size_gib"] == 0.5
    assert by["vg_trex-lv_swap"]["mountpoints"] == ["[SWAP]"]


def test_lsblk_pairs_skip_error_lines(recorded):
    devs = F.parse_lsblk((recorded / "storage/lsblk-P-o.failed-to-get-device-path.txt").read_text())
    assert [(d["name"], d["size_gib"], d["model"]) for d in devs] == [("sda", 931.0, "PERC H710P")]


def test_lsblk_bytes_and_json_from_lab():
    sec = F.split_sections((DATA / "facts.lab-host.debian12.txt").read_text())
    pairs = F.parse_lsblk(sec["lsblk"])
    as_json = F.parse_lsblk((DATA / "lsblk-J-b.debian12.json").read_text())
    assert pairs == as_json
    assert [(d["name"], d["size_gib"], d["mountpoints"]) for d in pairs] == [("zram0", 0.0, []), ("vda", 256.0, ["/"])]


def test_df_posix_with_spaces_and_dashes(recorded):
    fs = F.parse_df((recorded / "storage/df-alP.rhel.txt").read_text())
    by = {f["mount"]: f for f in fs}
    assert by["/"]["filesystem"] == "/dev/sda2" and by["/"]["size_gib"] == 17.0 and by["/"]["free_gib"] == 15.0
    assert by["/"]["use_pct"] == 12
    assert "/V M T o o l s" in by
    assert "/proc/sys/fs/binfmt_misc" not in by  # "-" sizes (df -a) skipped


def test_df_skips_error_and_blank_lines(recorded):
    fs = F.parse_df((recorded / "storage/df-alP.rhel6-with-errors.txt").read_text())
    assert fs[0]["mount"] == "/" and fs[0]["filesystem"] == "/dev/mapper/vg_lxcrhel6sat56-lv_root"
    assert {f["mount"] for f in fs} >= {"/", "/dev/shm", "/sys/fs/cgroup"}


def test_df_with_type_column_from_lab():
    sec = F.split_sections((DATA / "facts.lab-host.debian12.txt").read_text())
    fs = F.parse_df(sec["df"])
    assert fs[0] == {"filesystem": "/dev/vda", "fstype": "ext4", "mount": "/", "size_gib": 252.0, "used_gib": 34.5,
                     "free_gib": 56.6, "use_pct": 38}


def test_ip_json_and_oneline_agree():
    sec = F.split_sections((DATA / "facts.lab-host.debian12.txt").read_text())
    from_json = F.parse_ip_json(sec["ip"])
    oneline = F.parse_ip_oneline((DATA / "ip-o-link.debian12.txt").read_text(), (DATA / "ip-o-addr.debian12.txt").read_text())
    assert from_json == oneline
    eth0 = next(n for n in from_json if n["name"] == "eth0")
    assert eth0["mac"] == "02:fc:00:00:00:01" and eth0["state"] == "UP" and "192.0.2.2/24" in eth0["addresses"]
    assert "lo" not in [n["name"] for n in from_json]


def test_virtualization():
    assert F.parse_virt("sys_vendor=QEMU\nproduct_name=Standard PC (Q35 + ICH9, 2009)") == "kvm"
    assert F.parse_virt("sys_vendor=Dell Inc.\nproduct_name=PowerEdge R750xa") == "none"
    assert F.parse_virt("", hypervisor_flag=True) == "vm"
    assert F.parse_virt("container=docker") == "container (docker)"


def test_whole_facts_output_from_a_lab_host():
    f = F.parse_facts((DATA / "facts.lab-host.debian12.txt").read_text())
    assert f["hostname"] == "lab-1"
    assert (f["os_id"], f["os_version"], f["os_family"]) == ("debian", "12", "debian")
    assert (f["kernel"], f["arch"], f["cpus"]) == ("6.18.44-fc-v669", "x86_64", 2)
    assert f["mem_gib"] == 23.5 and f["cpu_model"] == "Intel(R) Xeon(R) Processor"
    assert f["pid1"] == "sshd" and f["has_systemd"] is False
    assert f["nvidia_smi"] is None and f["pci_gpus"] == [] and f["gpu_count"] == 0
    assert [x["mount"] for x in f["filesystems"]][:2] == ["/", "/etc"]  # tmpfs left out
    assert f["virtualization"] == "container (docker)"


def test_facts_with_gpus_count_nvidia_smi_first(recorded):
    # A facts output assembled from real outputs: the lab host's, with the A100 server's lspci and an
    # nvidia-smi section whose row is the recorded H100's (see the noheader test).
    text = (DATA / "facts.lab-host.debian12.txt").read_text()
    sec = F.split_sections(text)
    sec["pci"] = (recorded / "lspci/lspci-nn.a100-sxm4-40gb-and-80gb.torchruntime-15.txt").read_text()
    sec["nvidia-smi"] = "0, NVIDIA H100 80GB HBM3, GPU-00000000-0000-0000-0000-000000000000, 81559 MiB, 590.48.01\nexit=0"
    f = F.parse_facts("\n".join(f"@@mlplat-facts {k}@@\n{v}" for k, v in sec.items()))
    assert len(f["pci_gpus"]) == 2 and f["gpu_count"] == 1 and f["nvidia_smi"][0]["memory_total_mib"] == 81559
    sec["nvidia-smi"] = ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\nexit=9")
    f = F.parse_facts("\n".join(f"@@mlplat-facts {k}@@\n{v}" for k, v in sec.items()))
    assert f["nvidia_smi"] == [] and f["gpu_count"] == 2 and "couldn't communicate" in f["nvidia_smi_error"]


def test_facts_table_rows():
    f = F.parse_facts((DATA / "facts.lab-host.debian12.txt").read_text())
    ok = StepResult(host="lab-1", step="facts", data=f)
    bad = StepResult(host="lab-2", step="facts", ok=False, message="unreachable: 127.0.10.2:22 refused the connection")
    t = F.facts_table([ok, bad])
    rows = t.frame.to_dict("records")
    assert rows[0]["os"] == "Debian GNU/Linux 12 (bookworm) (debian)" and rows[0]["disks"] == "vda 256G"
    assert rows[0]["root_free_gib"] == "56.6 of 252" and rows[0]["nvidia_smi"] == "absent" and rows[0]["pci_gpus"] == "0"
    assert rows[1]["status"] == "failed" and "unreachable" in rows[1]["os"]
    assert "<table" in t._repr_html_()
