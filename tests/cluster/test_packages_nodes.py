"""Kubernetes packages (repository layout, pins, probes against recorded dpkg output and this
machine's own dpkg), node labels and the GPU verification, as plain functions."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from mlplat.cluster import nodes, packages as pk
from mlplat.cluster.kubeadm import plan_text
from mlplat.params import load_params

from cluster_helpers import SITE, golden


@pytest.fixture
def site():
    return load_params(SITE)


def test_repo_urls_follow_the_per_minor_layout_and_mirrors(site):
    assert pk.repo_url(site, "rpm") == "https://pkgs.k8s.io/core:/stable:/v1.34/rpm/"
    site.mirrors.kubernetes = "https://mirror.example/kubernetes/"
    assert pk.repo_url(site, "deb") == "https://mirror.example/kubernetes/core:/stable:/v1.34/deb/"
    site.mirrors.kubernetes = "https://mirrors.aliyun.com/kubernetes-new/core/stable/{minor}/{kind}"
    assert pk.repo_url(site, "rpm") == "https://mirrors.aliyun.com/kubernetes-new/core/stable/v1.34/rpm/"


def test_golden_package_plans(site):
    rhel = plan_text([pk.install_step(site, h) for h in site.hosts[:1]])
    assert "dnf install -y kubelet-1.34.4 kubeadm-1.34.4 kubectl-1.34.4 --disableexcludes=kubernetes" in rhel
    golden("packages-rocky9.txt", rhel)
    site.os.family, site.os.distro, site.os.version = "debian", "ubuntu", "24.04"
    steps = pk.install_steps(site, site.hosts[0])
    deb = plan_text(steps + [pk.remove_step(site, site.hosts[0])])
    assert "'kubeadm=1.34.4-*'" in deb and "apt-mark hold kubelet kubeadm kubectl" in deb
    golden("packages-ubuntu2404.txt", deb)
    # The keyring the list file names exists before the list does: with a signed-by keyring missing,
    # apt-get update fails (NO_PUBKEY), so no update may run between writing the list and the key.
    key, install = steps
    assert [f.path for f in key.files] == [] and pk.APT_LIST in [f.path for f in install.files]
    assert any(pk.APT_KEYRING in c and "gpg --dearmor" in c for c in key.commands)
    assert not any(c.startswith("apt-get update") for c in key.commands)  # only when curl or gpg is missing
    assert install.commands[0] == "apt-get update -q" and key.probe == f"test -s {pk.APT_KEYRING}"
    assert len(pk.install_steps(load_params(SITE), site.hosts[0])) == 1  # RHEL: dnf reads the key itself
    site.os.family, site.os.distro, site.os.version = "rhel", "centos", "7"
    assert "yum install -y kubelet-1.34.4" in plan_text([pk.install_step(site, site.hosts[0])])


def test_parse_recorded_dpkg_query(recorded, site):
    text = (recorded / "apt-dpkg" / "dpkg-query-W-f.pkg-ver-arch-status.ohai.txt").read_text()
    # the recorded format has an architecture column: Package Version Arch Status
    rows = [ln.split("\t") for ln in text.splitlines() if ln.strip()]
    three = "\n".join(f"{r[0]} {r[1]} {r[3]}" for r in rows if len(r) == 4)
    got = pk.parse_probe(three)
    assert got and all(i.status == "installed" for i in got.values())
    assert pk.missing(site, got) == ["kubelet (not installed)", "kubeadm (not installed)", "kubectl (not installed)"]


def test_versions_compare_on_the_upstream_part(site):
    got = pk.parse_probe("kubelet 1.34.4-1.1 installed\nkubeadm 1.34.4-150500.1.1 installed\n"
                         "kubectl 1:1.33.2-1.1 installed\n")
    assert pk.missing(site, got) == ["kubectl (found 1.33.2)"]


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="no dpkg on this machine")
def test_probe_commands_run_for_real_here():
    """The probes are shell: run them on this (Debian) machine. No Kubernetes 1.34.4 packages are
    installed here, so the pinned probe fails and the removal probe passes only if none is."""
    pinned = subprocess.run(["bash", "-c", pk.probe_command("debian", "1.34.4")], capture_output=True, text=True)
    assert pinned.returncode == 1
    listing = subprocess.run(["bash", "-c", pk.probe_command("debian")], capture_output=True, text=True)
    assert listing.returncode == 0
    assert all(line.split()[0] in pk.PACKAGES for line in listing.stdout.splitlines())


def test_removal_probe_counts_only_installed_packages(site, tmp_path):
    """A package removed but not purged (dpkg status config-files) is gone for the removal probe;
    an installed one is not. Run with a dpkg-query stand-in that prints those states."""
    site.os.family, site.os.distro, site.os.version = "debian", "ubuntu", "24.04"
    probe = pk.remove_step(site, site.hosts[0]).probe
    for f in (pk.APT_LIST, pk.APT_KEYRING):
        if Path(f).exists():
            pytest.skip(f"this machine has {f}, which the probe also looks for")
    fake = tmp_path / "dpkg-query"
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    for status, want in (("config-files", 0), ("installed", 1)):
        fake.write_text(f"#!/bin/sh\necho 'kubelet 1.34.4-1.1 {status}'\n")
        fake.chmod(0o755)
        got = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, env=env)
        assert got.returncode == want, (status, got.stdout, got.stderr)


# -- nodes ------------------------------------------------------------------------------------------

def _node(name, ready=True, gpus="8", reason="KubeletNotReady", message="container runtime network not ready"):
    cond = {"type": "Ready", "status": "True" if ready else "False"}
    if not ready:
        cond.update(reason=reason, message=message)
    return {"metadata": {"name": name}, "status": {"conditions": [cond], "allocatable": {nodes.GPU: gpus},
                                                   "capacity": {nodes.GPU: gpus}}}


def test_expected_gpus_come_from_params_on_real_sites_and_from_the_lab_otherwise(site):
    exp = nodes.expected_gpus(site)
    assert {n: e.gpus for n, e in exp.items()} == {"gpu-1": 8, "gpu-2": 8, "gpu-3": 8}
    assert "hosts[].gpus" in exp["gpu-1"].source


def test_verify_nodes_passes_and_fails_with_the_reason(site):
    ok = nodes.verify_nodes([_node("gpu-1"), _node("gpu-2"), _node("gpu-3")], site)
    assert all(r.ok for r in ok)
    bad = nodes.verify_nodes([_node("gpu-1", gpus="0"), _node("gpu-2", ready=False), _node("extra-9")], site)
    by = {r.host: r for r in bad}
    assert not by["gpu-1"].ok and "nvidia.com/gpu allocatable is 0, expected 8" in by["gpu-1"].message
    assert "device plugin" in by["gpu-1"].hint or "20_gpu_runtime" in by["gpu-1"].hint
    assert not by["gpu-2"].ok and "NotReady (KubeletNotReady: container runtime network not ready)" in by["gpu-2"].message
    assert not by["gpu-3"].ok and "not in the cluster" in by["gpu-3"].message
    assert by["extra-9"].ok and "not in the params" in by["extra-9"].message


def test_labels(site):
    labels = nodes.desired_labels(site)
    assert labels["gpu-1"] == {nodes.LABEL_ROLE_WORKER: "", nodes.LABEL_GPU_PRESENT: "true",
                               nodes.LABEL_GPU_MODEL: "NVIDIA-A100-SXM4-80GB"}
    site.hosts[2].gpus = 0
    assert nodes.desired_labels(site)["gpu-3"] == {nodes.LABEL_ROLE_WORKER: ""}
    assert nodes.label_value("  Tesla V100 (32GB) ") == "Tesla-V100-32GB"
