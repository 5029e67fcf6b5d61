"""The install-media pitfalls: a recorded dracut emergency message yields the label-mismatch hint;
with params and the boot line, the label is compared and the proven cause comes first; a different
dracut failure (an installed system's missing root LV) is not blamed on the install medium."""

from __future__ import annotations

from os_install_common import FIX
from mlplat.report import StepResult, hint_for
from mlplat.report.install_media import diagnose_install_log, known_pitfalls

RUFUS = (FIX / "dracut-dev-root.centos7-usb.rufus-1820.excerpt.txt").read_text()
COBBLER = (FIX / "dracut-lvm-root.centos7-installed.cobbler-1661.txt").read_text()
CENTOS7_DVD_LINE = r"vmlinuz initrd=initrd.img inst.stage2=hd:LABEL=CentOS\x207\x20x86_64 quiet"


def _ids(items):
    return [i["id"] for i in items]


def test_recorded_dev_root_yields_label_mismatch_first():
    out = diagnose_install_log(RUFUS)
    assert out and out[0]["id"] == "label-mismatch"
    assert "hd:LABEL=" in out[0]["cause"] and "/dev/disk/by-label" in out[0]["fix"]
    assert {"label-spaces", "label-changed-by-tool"} <= set(_ids(out))
    assert all(set(i) == {"id", "cause", "fix", "evidence"} for i in out)


def test_recorded_dev_root_through_the_step_hint():
    """The same message as a failed step's text gets the install-media hint (report/hints.py)."""
    r = StepResult(host="gpu01", step="os-install | boot", ok=False, message=RUFUS)
    assert "inst.stage2=hd:LABEL=" in r.hint and "05_os_install" in r.hint


def test_label_compared_with_params():
    params = {"os_install": {"iso_volume_label": "Rocky-9-5-x86_64-dvd"}}
    out = diagnose_install_log(RUFUS, params, cmdline="inst.stage2=hd:LABEL=Rocky-9-4-x86_64-dvd quiet")
    assert out[0]["id"] == "label-mismatch"
    assert "'Rocky-9-4-x86_64-dvd'" in out[0]["evidence"] and "'Rocky-9-5-x86_64-dvd'" in out[0]["evidence"]


def test_label_compared_with_params_model(site_params):
    out = diagnose_install_log(RUFUS, site_params, cmdline="inst.stage2=hd:LABEL=Rocky-9-4-x86_64-dvd")
    assert out[0]["id"] == "label-mismatch" and "Rocky-9-5-x86_64-dvd" in out[0]["evidence"]


def test_unescaped_spaces():
    params = {"os_install": {"iso_volume_label": "CentOS 7 x86_64"}}
    out = diagnose_install_log(RUFUS, params, cmdline="inst.stage2=hd:LABEL=CentOS 7 x86_64 quiet")
    proven = [i["id"] for i in out if i["evidence"]]
    assert "label-spaces" in proven and "the space ended the argument" in \
        next(i for i in out if i["id"] == "label-spaces")["evidence"]
    assert r"hd:LABEL=CentOS\x207\x20x86_64" in next(i for i in out if i["id"] == "label-spaces")["cause"]


def test_relabelled_by_tool():
    # Constructed, not recorded: what `ls -l /dev/disk/by-label/` shows in the dracut shell after
    # an ISO-mode writer formatted the stick as FAT32 (upper case, 11 characters).
    listing = ("dracut:/# ls -l /dev/disk/by-label/\ntotal 0\n"
               "lrwxrwxrwx 1 root root 10 Nov  6 10:01 CENTOS\\x207\\x20X8 -> ../../sdb1\n")
    params = {"os_install": {"iso_volume_label": "CentOS 7 x86_64"}}
    out = diagnose_install_log(RUFUS + listing, params, cmdline=CENTOS7_DVD_LINE)
    assert _ids(out)[:2] == ["label-mismatch", "label-changed-by-tool"]
    assert "'CENTOS 7 X8'" in out[1]["evidence"] and "writing tool changed the label" in out[1]["evidence"]


def test_label_present_points_at_kickstart():
    # Constructed blkid line: the stick carries the right label, so the medium is not the problem.
    blkid = '\n/dev/sdb1: UUID="2020-11-04-11-36-43-00" LABEL="CentOS 7 x86_64" TYPE="iso9660"\n'
    out = diagnose_install_log(RUFUS + blkid, {"os_install": {"iso_volume_label": "CentOS 7 x86_64"}},
                               cmdline=CENTOS7_DVD_LINE + " inst.ks=http://10.20.0.5:8000/os-install/gpu01/ks.cfg")
    assert _ids(out) == ["ks-unreachable"] and "DHCP" in out[0]["evidence"]


def test_installed_system_root_is_not_an_install_media_problem():
    assert diagnose_install_log(COBBLER) == []
    assert "not an install-media problem" in hint_for(COBBLER)


def test_ubuntu_autoinstall_not_starting():
    # Constructed: subiquity's confirmation prompt, shown when it found a config but the kernel
    # command line lacks `autoinstall`.
    out = diagnose_install_log("Continue with autoinstall? (yes|no)",
                               cmdline="BOOT_IMAGE=/casper/vmlinuz 'ds=nocloud;s=http://10.20.0.5/os-install/gpu01/' ---")
    assert out[0]["id"] == "autoinstall-missing" and "Continue with autoinstall?" in out[0]["evidence"]
    cut = diagnose_install_log("subiquity", cmdline="BOOT_IMAGE=/casper/vmlinuz autoinstall ds=nocloud ---")
    assert cut[0]["id"] == "ds-semicolon"
    unreachable = diagnose_install_log(
        "cloud-init[612]: url_helper.py[WARNING]: Calling 'http://10.20.0.5/os-install/gpu01/meta-data' failed",
        cmdline="BOOT_IMAGE=/casper/vmlinuz autoinstall ds=nocloud;s=http://10.20.0.5/os-install/gpu01/ ---")
    assert unreachable[0]["id"] == "ds-unreachable" and "url_helper" in unreachable[0]["evidence"]


def test_nothing_known():
    assert diagnose_install_log("") == []
    assert diagnose_install_log("kernel: Linux version 5.14.0") == []


def test_known_pitfalls_table():
    rows = known_pitfalls("CentOS 7 x86_64")
    assert [r["id"] for r in rows] == ["label-mismatch", "label-spaces", "label-changed-by-tool", "ks-unreachable",
                                       "autoinstall-missing", "ds-unreachable", "ds-semicolon"]
    assert r"CentOS\x207\x20x86_64" in rows[1]["cause"]


def test_phase_step_with_an_install_log(tmp_path, root_hash):
    """The notebook's pitfalls step given a log file: the proven cause first, recorded as
    information (the phase's files can be fine while an install failed)."""
    from mlplat.phases import os_install as phase

    phase.setup(params_file=str(FIX / "site.yaml"), run_dir=str(tmp_path))
    log = tmp_path / "console.txt"
    log.write_text(RUFUS + "\ndracut:/# cat /proc/cmdline\ninitrd=initrd.img inst.stage2=hd:LABEL=Rocky-9-4-x86_64-dvd quiet\n")
    table = phase.media_pitfalls(str(log))
    assert table.frame.iloc[0]["cause"].startswith("the installer's stage2 image was not found")
    assert "'Rocky-9-5-x86_64-dvd'" in table.frame.iloc[0]["evidence"]
    rec = phase._ctx().phase.steps["install log"][0]
    assert rec.ok and "label-mismatch" in rec.message
    generic = phase.media_pitfalls()
    assert len(generic) == 7 and not generic.frame["evidence"].any()
