"""The NVIDIA side of phase 20: nouveau blacklisted (initramfs rebuilt), NVIDIA's CUDA and container
toolkit repositories, the driver branch of ``versions.nvidia_driver`` as DKMS from the CUDA repo,
the CUDA toolkit when asked, the NVIDIA container toolkit, a bounded reboot when the driver needs
one, and the checks: ``nvidia-smi`` on the host and in a container.

Every step that needs a GPU reads the host's facts (PCI scan / nvidia-smi) and reports
``skipped: no NVIDIA GPU`` on hosts without one.
"""

from __future__ import annotations

import re
import shlex
import time
from typing import Optional

from ..hosts.facts import parse_nvidia_smi_csv
from ..params.versions import parse_version
from .base import Call, Outcome, RemoteError, Run, Target, converged, fail, file_action, have, skip
from .packages import ensure_packages, install_command, installed, refresh_command

NOUVEAU_CONF = "/etc/modprobe.d/blacklist-nouveau.conf"
NOUVEAU = ("# Written by mlplat (20_gpu_runtime): the NVIDIA driver needs nouveau out of the way.\n"
           "blacklist nouveau\noptions nouveau modeset=0\n")
CUDA_BASE = "https://developer.download.nvidia.com/compute/cuda/repos"
TOOLKIT_BASE = "https://nvidia.github.io/libnvidia-container"
CUDA_KEY = {"rhel": "D42D0685.pub", "debian": "3bf863cc.pub"}
NO_GPU = "no NVIDIA GPU on this host (facts: PCI scan and nvidia-smi found none)"


def cuda_repo_id(t: Target) -> str:
    """NVIDIA's name for the host's CUDA repository: rhel9, rhel8, rhel7, ubuntu2404, debian12..."""
    if t.rhel:
        return f"rhel{t.major}"
    v = t.os_version.replace(".", "")
    return f"ubuntu{v}" if t.os_id == "ubuntu" else f"debian{t.major}"


def _arch(t: Target) -> str:
    a = t.facts.get("arch") or "x86_64"
    return {"aarch64": "sbsa"}.get(a, a)


def cuda_repo_url(t: Target) -> str:
    return f"{(t.params.mirrors.nvidia_cuda or CUDA_BASE).rstrip('/')}/{cuda_repo_id(t)}/{_arch(t)}"


def toolkit_base(t: Target) -> str:
    return (t.params.mirrors.nvidia_container_toolkit or TOOLKIT_BASE).rstrip("/")


def repo_files(t: Target) -> dict[str, str]:
    """The CUDA repo and the container toolkit repo, as files (content as NVIDIA publishes them)."""
    cuda = cuda_repo_url(t)
    tk = toolkit_base(t)
    rid = f"cuda-{cuda_repo_id(t)}-{_arch(t)}"
    if t.rhel:
        return {
            f"/etc/yum.repos.d/{rid}.repo":
                f"[{rid}]\nname={rid}\nbaseurl={cuda}\nenabled=1\ngpgcheck=1\ngpgkey={cuda}/{CUDA_KEY['rhel']}\n",
            "/etc/yum.repos.d/nvidia-container-toolkit.repo":
                f"[nvidia-container-toolkit]\nname=nvidia-container-toolkit\nbaseurl={tk}/stable/rpm/$basearch\n"
                f"repo_gpgcheck=1\ngpgcheck=0\nenabled=1\ngpgkey={tk}/gpgkey\nsslverify=1\n"
                "sslcacert=/etc/pki/tls/certs/ca-bundle.crt\n",
        }
    return {
        f"/etc/apt/sources.list.d/{rid}.list":
            f"deb [signed-by=/usr/share/keyrings/cuda-archive-keyring.gpg] {cuda}/ /\n",
        "/etc/apt/sources.list.d/nvidia-container-toolkit.list":
            f"deb [signed-by=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg] {tk}/stable/deb/$(ARCH) /\n",
    }


def parse_dnf_module_streams(text: str, module: str = "nvidia-driver") -> list[str]:
    """Stream names of ``dnf module list MODULE`` (markers such as [e] [d] dropped)."""
    streams = []
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 2 and f[0] == module and f[1] != "Stream":
            streams.append(f[1])
    return list(dict.fromkeys(streams))


def pick_stream(streams: list[str], branch: str) -> Optional[str]:
    """The DKMS stream of a driver branch: '580-dkms', else '580-open' (open modules, DKMS too)."""
    for s in (f"{branch}-dkms", f"{branch}-open"):
        if s in streams:
            return s
    return None


def driver_major(t: Target) -> Optional[int]:
    rows = t.facts.get("nvidia_smi") or []
    for r in rows:
        v = r.get("driver_version")
        if v:
            return parse_version(v)[0]
    return None


# -- steps --------------------------------------------------------------------------------------

def plan_nouveau(t: Target) -> Outcome:
    """nouveau blacklisted in modprobe.d and the initramfs rebuilt (dracut / update-initramfs)."""
    if not t.gpus:
        return skip(NO_GPU)
    actions = file_action(t, NOUVEAU_CONF, NOUVEAU)
    if actions:
        actions.append(Run("dracut -f" if t.rhel else "update-initramfs -u",
                           "rebuild the initramfs without nouveau", timeout=900))
    loaded = t.remote.run("[ -d /sys/module/nouveau ]").ok
    warnings = []
    if loaded:
        t.state["reboot_reason"] = "nouveau is loaded (blacklisted for the next boot)"
        warnings.append("nouveau is loaded now: the reboot step takes it out")
    if not actions:
        return converged("nouveau blacklisted" + ("" if loaded else ", not loaded"), warnings)
    return Outcome(actions=actions, warnings=warnings)


def plan_repos(t: Target) -> Outcome:
    """NVIDIA's CUDA repository (driver packages) and the container toolkit repository."""
    if not t.gpus:
        return skip(NO_GPU)
    actions: list = []
    files = repo_files(t)
    for path, content in files.items():
        actions += file_action(t, path, content)
    if t.debian:
        keys = {"/usr/share/keyrings/cuda-archive-keyring.gpg": f"{cuda_repo_url(t)}/{CUDA_KEY['debian']}",
                "/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg": f"{toolkit_base(t)}/gpgkey"}
        for path, url in keys.items():
            if t.remote.read(path) is None:
                actions.append(Run(f"curl -fsSL --max-time 60 {shlex.quote(url)} | gpg --batch --yes --dearmor -o {path}",
                                   f"fetch the signing key {url}"))
    if not actions:
        return converged("CUDA and container toolkit repositories configured: " + ", ".join(files))
    actions.append(Run(refresh_command(t), "refresh the package lists", timeout=900))
    return Outcome(actions=actions, message=f"CUDA repo {cuda_repo_url(t)}")


def plan_driver(t: Target) -> Outcome:
    """The driver branch of versions.nvidia_driver, DKMS, from the CUDA repository."""
    if not t.gpus:
        return skip(NO_GPU)
    branch = str(parse_version(t.params.versions.nvidia_driver)[0])
    running = driver_major(t)
    if running is not None and str(running) == branch:
        return converged(f"driver {running} running (nvidia-smi)")
    if t.rhel and not t.el7:
        streams = parse_dnf_module_streams(t.remote.run("dnf -q module list nvidia-driver 2>&1").stdout)
        enabled = t.remote.run("dnf -q module list --enabled nvidia-driver 2>&1").stdout
        stream = pick_stream(streams, branch)
        if stream is None:
            return fail(f"the CUDA repository has no nvidia-driver stream for branch {branch} "
                        f"(streams: {', '.join(streams) or 'none: is the CUDA repo configured?'})")
        if f" {stream} [e]" in enabled or re.search(rf"^nvidia-driver\s+{re.escape(stream)}\s+\[e\]", enabled, re.M):
            pkgs = installed(t, ["nvidia-driver", "kmod-nvidia-latest-dkms", "kmod-nvidia-open-dkms"])
            if "nvidia-driver" in pkgs:
                t.state["reboot_reason"] = t.state.get("reboot_reason") or f"driver {pkgs['nvidia-driver']} installed, not loaded"
                return converged(f"nvidia-driver:{stream} installed ({pkgs['nvidia-driver']}); not loaded yet",
                                 ["the driver loads after the reboot step"])
        cmd = f"dnf -y module install nvidia-driver:{stream}"
        action = Run(cmd, f"install the driver nvidia-driver:{stream} (DKMS)", timeout=3600)
    else:
        name = f"nvidia-driver-branch-{branch}" if t.el7 else f"cuda-drivers-{branch}"
        pkgs = installed(t, [name])
        if name in pkgs:
            t.state["reboot_reason"] = t.state.get("reboot_reason") or f"{name} installed, not loaded"
            return converged(f"{name} {pkgs[name]} installed; not loaded yet", ["the driver loads after the reboot step"])
        action = Run(install_command(t, [name]), f"install {name} (DKMS)", timeout=3600)
    t.state["reboot_reason"] = t.state.get("reboot_reason") or f"driver {branch} installed"
    return Outcome(actions=[action], message=f"driver now: {running or 'none'}", verify=False)


def plan_cuda(t: Target) -> Outcome:
    if not t.params.gpu_runtime.cuda_toolkit:
        return skip("gpu_runtime.cuda_toolkit is false: containers bring their own CUDA; only the driver is on the host")
    if not t.gpus:
        return skip(NO_GPU)
    v = parse_version(t.params.versions.cuda)
    pkg = f"cuda-toolkit-{v[0]}-{v[1] if len(v) > 1 else 0}"
    actions, _ = ensure_packages(t, [pkg], f"install {pkg}")
    if not actions:
        return converged(f"{pkg} installed")
    return Outcome(actions=actions)


def plan_toolkit(t: Target) -> Outcome:
    """nvidia-container-toolkit (nvidia-ctk, nvidia-container-runtime), pinned to versions."""
    if not t.gpus:
        return skip(NO_GPU + "; the toolkit goes on GPU hosts")
    want = t.params.versions.nvidia_container_toolkit
    pkgs = installed(t, ["nvidia-container-toolkit"])
    have_v = pkgs.get("nvidia-container-toolkit", "")
    if have_v.startswith(want):
        return converged(f"nvidia-container-toolkit {have_v}")
    # 1.18 wants libnvidia-container* at exactly the toolkit's version: pin all of them.
    names = ["nvidia-container-toolkit", "nvidia-container-toolkit-base", "libnvidia-container-tools",
             "libnvidia-container1"]
    if t.debian:
        spec = [f"{n}={want}-1" for n in names]
    else:
        spec = [f"{n}-{want}" for n in names]
    return Outcome(actions=[Run(install_command(t, spec), f"install nvidia-container-toolkit {want}", timeout=1800)],
                   message=f"now: {have_v or 'absent'}")


def plan_reboot(t: Target) -> Outcome:
    """Reboot when an earlier step said so (driver installed, nouveau loaded), then wait for the
    host: bounded by gpu_runtime.reboot_timeout. Apply mode only; never on a host without an init
    system (a lab host's reboot would be the machine's)."""
    reason = t.state.get("reboot_reason")
    if not reason:
        return converged("no reboot needed")
    if not t.params.gpu_runtime.reboot:
        return converged("not rebooted (gpu_runtime.reboot is false)", [f"reboot needed: {reason}"])
    if not t.has_systemd:
        return skip(f"reboot needed ({reason}) but {t.no_systemd_reason()}")
    timeout = t.params.gpu_runtime.reboot_timeout

    def reboot(tt: Target) -> str:
        return reboot_and_wait(tt, timeout)

    return Outcome(actions=[Call(reboot, f"reboot ({reason}) and wait up to {timeout:g}s",
                                 shown=f"systemctl reboot; wait for SSH and a new boot id (at most {timeout:g}s)")],
                   message=f"reboot needed: {reason}", verify=False)


def reboot_and_wait(t: Target, timeout: float) -> str:
    before = t.remote.run("cat /proc/sys/kernel/random/boot_id").stdout.strip()
    t.remote.run("nohup sh -c 'sleep 2; systemctl reboot' >/dev/null 2>&1 </dev/null &")
    conn = getattr(t.remote, "conn", None)
    t0 = time.monotonic()
    time.sleep(10)
    last = ""
    while time.monotonic() - t0 < timeout:
        try:
            if conn is not None:
                conn.close()
            now = t.remote.run("cat /proc/sys/kernel/random/boot_id").stdout.strip()
            if now and now != before:
                t.state.pop("reboot_reason", None)
                return f"rebooted, back after {time.monotonic() - t0:.0f}s"
            last = "same boot id (not down yet)"
        except Exception as e:
            last = f"{type(e).__name__}"
        time.sleep(5)
    raise RemoteError(f"host did not come back within {timeout:g}s after the reboot ({last}); check its console")


def plan_verify_host(t: Target) -> Outcome:
    """nvidia-smi on the host: every GPU of the PCI scan answers, with the driver branch asked for."""
    if not t.gpus:
        return skip(NO_GPU)
    if t.state.get("reboot_reason"):
        return skip(f"checked after the reboot ({t.state['reboot_reason']})")
    r = t.remote.run("timeout 60 nvidia-smi --query-gpu=index,name,uuid,memory.total,driver_version "
                     "--format=csv,noheader 2>&1")
    if not r.ok:
        return fail(f"nvidia-smi failed: {r.tail()}" + (" (reboot pending)" if t.state.get("reboot_reason") else ""))
    rows = parse_nvidia_smi_csv(r.stdout)
    pci = len(t.facts.get("pci_gpus") or []) or t.gpus
    drivers = sorted({x.get("driver_version") or "?" for x in rows})
    branch = str(parse_version(t.params.versions.nvidia_driver)[0])
    if len(rows) < pci:
        return fail(f"nvidia-smi sees {len(rows)} of {pci} GPUs")
    msg = f"{len(rows)}x {', '.join(sorted({x.get('name') or '?' for x in rows}))}, driver {', '.join(drivers)}"
    warnings = [] if all(d.startswith(branch + ".") for d in drivers) else [f"driver is not branch {branch}"]
    return converged(msg, warnings)


def plan_verify_container(t: Target) -> Outcome:
    """nvidia-smi inside a container (containerd's ctr, or docker on the legacy path)."""
    if not t.gpus:
        return skip(NO_GPU)
    if not t.has_systemd:
        return skip(t.no_systemd_reason())
    if t.state.get("reboot_reason"):
        return skip(f"checked after the reboot ({t.state['reboot_reason']})")
    image = t.params.gpu_runtime.smoke_image
    if t.params.gpu_runtime.docker_legacy and have(t, "docker"):
        cmd = f"timeout 600 docker run --rm --gpus all {shlex.quote(image)} nvidia-smi -L"
    else:
        cmd = (f"timeout 600 sh -c 'ctr -n mlplat image pull {shlex.quote(image)} >/dev/null && "
               f"ctr -n mlplat run --rm --gpus 0 {shlex.quote(image)} mlplat-smoke-$$ nvidia-smi -L'")
    r = t.remote.run(cmd, timeout=700)
    if not r.ok:
        return fail(f"nvidia-smi in a container failed: {r.tail()}")
    gpus = [ln for ln in r.stdout.splitlines() if ln.startswith("GPU ")]
    return converged(f"container sees {len(gpus)} GPU(s): {gpus[0] if gpus else r.stdout.strip()[:80]}")
