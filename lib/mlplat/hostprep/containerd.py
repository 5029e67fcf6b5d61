"""containerd for Kubernetes with the NVIDIA runtime as its default, and the legacy Docker path.

- install: ``containerd.io`` from Docker's repository (2.x, pinned to ``versions.containerd``) or the
  distribution's ``containerd`` (``gpu_runtime.containerd_source``). Debian 12 ships 1.6.20, Ubuntu
  24.04 1.7: below the 2.x default, said so in the step's message.
- configure: ``/etc/containerd/config.toml`` in the format of the installed major version (config
  ``version = 2`` for 1.x, ``version = 3`` for 2.x), with the runc runtime's ``SystemdCgroup`` as
  ``kubernetes.cgroup_driver`` says, the sandbox (pause) image the chosen Kubernetes expects, and
  ``imports`` of ``/etc/containerd/conf.d/*.toml``.
- NVIDIA runtime: ``nvidia-ctk runtime configure --runtime=containerd --set-as-default`` with explicit
  ``--config``/``--drop-in-config`` (toolkit 1.18.0 wrote ``config.d/`` instead of ``conf.d/``,
  NVIDIA/nvidia-container-toolkit#1404), writing ``/etc/containerd/conf.d/99-nvidia.toml``. Where
  nvidia-ctk is not installed, mlplat writes the same drop-in itself.

The TOML is written the way nvidia-ctk (go-toml) writes it, byte for byte (tests compare with its
captured output), so running nvidia-ctk over mlplat's files changes nothing and neither tool undoes
the other.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any, Optional

from ..params.versions import PAUSE_IMAGE, minor, parse_version
from .base import Outcome, Run, Target, WriteFile, converged, fail, file_action, have, skip, systemd_enable
from .packages import install_command, parse_apt_policy, parse_containerd_version, refresh_command

CONFIG = "/etc/containerd/config.toml"
DROPIN_DIR = "/etc/containerd/conf.d"
DROPIN = f"{DROPIN_DIR}/99-nvidia.toml"
NVIDIA_RUNTIME = "/usr/bin/nvidia-container-runtime"
DOCKER_DAEMON = "/etc/docker/daemon.json"
CRI_V2 = "io.containerd.grpc.v1.cri"
CRI_V3_RUNTIME = "io.containerd.cri.v1.runtime"
CRI_V3_IMAGES = "io.containerd.cri.v1.images"


# -- TOML as nvidia-ctk writes it ---------------------------------------------------------------------

def _key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def _val(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_val(x) for x in v) + "]"
    return json.dumps(v)


def dump_toml(d: dict) -> str:
    """TOML in go-toml's layout (what nvidia-ctk writes): keys sorted, scalars before sub-tables,
    every table header written (empty parents too), two spaces of indent per level."""
    lines: list[str] = []

    def walk(node: dict, path: list[str]):
        for k in sorted(x for x, v in node.items() if not isinstance(v, dict)):
            lines.append("  " * len(path) + f"{_key(k)} = {_val(node[k])}")
        for k in sorted(x for x, v in node.items() if isinstance(v, dict)):
            sub = path + [k]
            lines.append("")
            lines.append("  " * (len(sub) - 1) + "[" + ".".join(_key(p) for p in sub) + "]")
            walk(node[k], sub)

    walk(d, [])
    return "\n".join(lines) + "\n"


def config_dict(major: int, pause: str, systemd_cgroup: bool, restrict_oom: bool = False) -> dict:
    """The settings mlplat owns in config.toml (containerd fills in the rest with its defaults).
    ``restrict_oom``: ``restrict_oom_score_adj = true``, for hosts where containerd cannot lower an
    ``oom_score_adj`` (no CAP_SYS_RESOURCE: a container, a user namespace, the lab); without it
    every pod sandbox fails with "can't get final child's PID from pipe"."""
    runc = {"runtime_type": "io.containerd.runc.v2", "options": {"SystemdCgroup": systemd_cgroup}}
    if major >= 2:
        plugins = {CRI_V3_IMAGES: {"pinned_images": {"sandbox": pause}},
                   CRI_V3_RUNTIME: {"containerd": {"runtimes": {"runc": runc}}}}
        if restrict_oom:
            plugins[CRI_V3_RUNTIME]["restrict_oom_score_adj"] = True
        version = 3
    else:
        plugins = {CRI_V2: {"sandbox_image": pause, "containerd": {"runtimes": {"runc": runc}}}}
        if restrict_oom:
            plugins[CRI_V2]["restrict_oom_score_adj"] = True
        version = 2
    return {"version": version, "imports": [f"{DROPIN_DIR}/*.toml"], "plugins": plugins}


def render_config(major: int, pause: str, systemd_cgroup: bool, restrict_oom: bool = False) -> str:
    return dump_toml(config_dict(major, pause, systemd_cgroup, restrict_oom))


CAP_SYS_RESOURCE = 24


def lacks_sys_resource(status_text: str) -> bool:
    """From /proc/self/status: is CAP_SYS_RESOURCE missing from the effective set?"""
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            return not (int(line.split()[1], 16) >> CAP_SYS_RESOURCE) & 1
    return False


def render_nvidia_dropin(major: int, pause: str, systemd_cgroup: bool) -> str:
    """The drop-in ``nvidia-ctk runtime configure --runtime=containerd --set-as-default`` writes over
    mlplat's config.toml: the CRI runtime plugin's section, with an ``nvidia`` runtime made from
    runc's plus ``BinaryName``, and ``default_runtime_name = "nvidia"``."""
    cfg = config_dict(major, pause, systemd_cgroup)
    plugin = CRI_V3_RUNTIME if major >= 2 else CRI_V2
    section = copy.deepcopy(cfg["plugins"][plugin])
    ctr = section["containerd"]
    nvidia = copy.deepcopy(ctr["runtimes"]["runc"])
    nvidia["options"]["BinaryName"] = NVIDIA_RUNTIME
    ctr["runtimes"]["nvidia"] = nvidia
    ctr["default_runtime_name"] = "nvidia"
    return dump_toml({"version": cfg["version"], "plugins": {plugin: section}})


def dropin_default_runtime(text: str) -> tuple[Optional[str], Optional[str]]:
    """(default_runtime_name, the nvidia runtime's BinaryName) from a drop-in of either version."""
    import tomllib

    try:
        d = tomllib.loads(text)
    except Exception:
        return None, None
    for plugin in (CRI_V3_RUNTIME, CRI_V2):
        c = d.get("plugins", {}).get(plugin, {}).get("containerd", {})
        if c:
            binary = c.get("runtimes", {}).get("nvidia", {}).get("options", {}).get("BinaryName")
            return c.get("default_runtime_name"), binary
    return None, None


def docker_daemon_json(existing: Optional[str], systemd_cgroup: bool) -> str:
    """daemon.json as ``nvidia-ctk runtime configure --runtime=docker --set-as-default`` leaves it
    (4-space JSON, keys sorted, no final newline), plus the cgroup driver of the params."""
    d = json.loads(existing) if existing and existing.strip() else {}
    d["default-runtime"] = "nvidia"
    d.setdefault("runtimes", {})["nvidia"] = {"args": [], "path": "nvidia-container-runtime"}
    opts = [o for o in d.get("exec-opts", []) if not o.startswith("native.cgroupdriver=")]
    d["exec-opts"] = opts + [f"native.cgroupdriver={'systemd' if systemd_cgroup else 'cgroupfs'}"]
    return json.dumps(d, indent=4, sort_keys=True)


# -- helpers ------------------------------------------------------------------------------------

def pause_image(t: Target) -> str:
    k = minor(t.params.versions.kubernetes)
    tag = PAUSE_IMAGE.get(k)
    if tag is None:
        raise ValueError(f"no pause image known for Kubernetes {t.params.versions.kubernetes}")
    repo = t.params.kubernetes.image_repository or "registry.k8s.io"
    return f"{repo.rstrip('/')}/pause:{tag}"


def installed_version(t: Target) -> Optional[str]:
    r = t.remote.run("containerd --version 2>/dev/null")
    return parse_containerd_version(r.stdout) if r.ok else None


def docker_repo_base(t: Target) -> str:
    base = (t.params.mirrors.docker or "https://download.docker.com/linux").rstrip("/")
    if t.debian:
        return f"{base}/{'ubuntu' if t.os_id == 'ubuntu' else 'debian'}"
    return f"{base}/{'rhel' if t.os_id == 'rhel' else 'centos'}"


def docker_repo_files(t: Target, codename: str) -> dict[str, str]:
    base = docker_repo_base(t)
    if t.debian:
        return {"/etc/apt/sources.list.d/docker.list":
                f"deb [signed-by=/etc/apt/keyrings/docker.asc] {base} {codename} stable\n"}
    return {"/etc/yum.repos.d/docker-ce.repo":
            f"[docker-ce-stable]\nname=Docker CE Stable - $basearch\nbaseurl={base}/$releasever/$basearch/stable\n"
            f"enabled=1\ngpgcheck=1\ngpgkey={base}/gpg\n"}


def _systemd_cgroup(t: Target) -> bool:
    return t.params.kubernetes.cgroup_driver == "systemd"


def _major(v: Optional[str]) -> int:
    return parse_version(v)[0] if v else 0


# -- steps --------------------------------------------------------------------------------------

def plan_install(t: Target) -> Outcome:
    """containerd (and runc) installed; from Docker's repository pinned to versions.containerd, or the
    distribution's package."""
    want = t.params.versions.containerd
    src = t.params.gpu_runtime.containerd_source
    have_v = installed_version(t)
    actions: list = []
    warnings = []
    if src == "distro":
        if t.rhel:
            return fail("the RHEL family ships no containerd package: set gpu_runtime.containerd_source: docker-repo")
        if have_v is None:
            pol = parse_apt_policy(t.remote.run("apt-cache policy containerd").stdout).get("containerd") or {}
            cand = pol.get("candidate")
            if not cand:
                return fail("the distribution's repositories offer no containerd package (apt-cache policy containerd)")
            actions.append(Run(install_command(t, ["containerd"]), f"install containerd {cand} (distribution)",
                               timeout=1800))
            have_v = parse_containerd_version(f"containerd x {cand}")
        msg_src = "the distribution's package"
    else:
        from .mirrors import codename

        if have_v is None or not have_v.startswith(want):
            files = docker_repo_files(t, codename(t))
            for path, content in files.items():
                actions += file_action(t, path, content)
            if t.debian:
                key = "/etc/apt/keyrings/docker.asc"
                if t.remote.read(key) is None:
                    actions.append(Run(f"install -d -m 0755 /etc/apt/keyrings && curl -fsSL --max-time 60 "
                                       f"{docker_repo_base(t)}/gpg -o {key} && chmod a+r {key}",
                                       "fetch Docker's repository key"))
                pin = f"containerd.io={want}-*"
            else:
                pin = f"containerd.io-{want}"
            if actions:
                actions.append(Run(refresh_command(t), "refresh the package lists", timeout=900))
            actions.append(Run(install_command(t, [pin]), f"install containerd.io {want} (Docker's repository)",
                               timeout=1800))
        msg_src = "Docker's repository"
    if have_v and _major(have_v) < _major(want):
        warnings.append(f"containerd {have_v} from {msg_src} is older than versions.containerd {want} "
                        f"(config format version 2 is written for it)"
                        + ("; Debian 12 ships only 1.6: use containerd_source: docker-repo for 2.x" if src == "distro" else ""))
    if have_v and minor(have_v) < (1, 7) and minor(t.params.versions.kubernetes) >= (1, 30):
        warnings.append(f"containerd {have_v} is below what containerd's RELEASES.md lists for Kubernetes "
                        f"{t.params.versions.kubernetes} (1.7.x / 2.x)")
    if t.has_systemd:
        if actions:
            actions.append(Run("systemctl enable --now containerd", "enable and start containerd"))
        else:
            actions += systemd_enable(t, "containerd")
    else:
        warnings.append("no systemd as PID 1: containerd is installed but not started here")
    if not actions:
        return converged(f"containerd {have_v} installed", warnings)
    return Outcome(actions=actions, message=f"containerd {have_v or 'absent'} now", warnings=warnings,
                   data={"containerd_version": have_v})


def planned_version(t: Target) -> Optional[str]:
    """The containerd version the install step would bring (plan mode, before it is installed)."""
    if t.params.gpu_runtime.containerd_source == "docker-repo":
        return t.params.versions.containerd
    if t.rhel:
        return None
    pol = parse_apt_policy(t.remote.run("apt-cache policy containerd").stdout).get("containerd") or {}
    return parse_containerd_version(f"containerd x {pol.get('candidate') or ''}")


def plan_configure(t: Target) -> Outcome:
    """config.toml: SystemdCgroup per kubernetes.cgroup_driver, the sandbox image of the chosen
    Kubernetes, imports of conf.d drop-ins; containerd restarted when it changed."""
    v = installed_version(t) or planned_version(t)
    if v is None:
        return fail("containerd is not installed and no package offers it (see the install step)")
    major = _major(v)
    pause = pause_image(t)
    restrict = lacks_sys_resource(t.remote.run("cat /proc/self/status").stdout)
    content = render_config(major, pause, _systemd_cgroup(t), restrict)
    actions = file_action(t, CONFIG, content, backup=True)
    if actions and t.has_systemd and installed_version(t):
        actions.append(Run("systemctl restart containerd", "restart containerd"))
    msg = (f"config version {3 if major >= 2 else 2} for containerd {v}: SystemdCgroup = "
           f"{str(_systemd_cgroup(t)).lower()}, sandbox {pause}, imports {DROPIN_DIR}/*.toml"
           + ("; restrict_oom_score_adj = true (no CAP_SYS_RESOURCE on this host)" if restrict else ""))
    if not actions:
        return converged(msg + _dump_check(t))
    return Outcome(actions=actions, message=msg)


def _dump_check(t: Target) -> str:
    """What containerd itself reads (``containerd config dump``: the merged config with drop-ins)."""
    r = t.remote.run("containerd config dump 2>/dev/null")
    if not r.ok:
        return ""
    found = re.findall(r'default_runtime_name = "([^"]*)"', r.stdout)
    return f"; containerd config dump: default runtime {', '.join(dict.fromkeys(found)) or '?'}"


def nvidia_runtime_wanted(t: Target) -> Optional[str]:
    """None when this host gets the NVIDIA runtime as default; else why not."""
    if t.params.gpu_runtime.nvidia_runtime_default == "all-hosts":
        return None
    if t.gpus:
        return None
    return ("no NVIDIA GPU on this host (facts): the NVIDIA runtime is made the default on GPU hosts only "
            "(gpu_runtime.nvidia_runtime_default: all-hosts makes it everywhere)")


def plan_nvidia_runtime(t: Target) -> Outcome:
    """NVIDIA runtime as containerd's default, in the drop-in /etc/containerd/conf.d/99-nvidia.toml."""
    why = nvidia_runtime_wanted(t)
    if why:
        return skip(why)
    v = installed_version(t) or planned_version(t)
    if v is None:
        return fail("containerd is not installed and no package offers it (see the install step)")
    major = _major(v)
    pause = pause_image(t)
    want = render_nvidia_dropin(major, pause, _systemd_cgroup(t))
    cur = t.remote.read(DROPIN)
    default, binary = dropin_default_runtime(cur or "")
    cfg = t.remote.read(CONFIG)
    # Plan mode on a host the configure step has not touched yet (no config, or the package's own):
    # that step writes mlplat's, which has the imports.
    mine = cfg is not None and cfg.startswith("imports = ")
    imports_ok = f"{DROPIN_DIR}/*.toml" in (cfg if mine else render_config(major, pause, True))
    warnings = []
    stray = t.remote.read("/etc/containerd/config.d/99-nvidia.toml")
    if stray is not None:
        warnings.append("/etc/containerd/config.d/99-nvidia.toml exists (nvidia-ctk 1.18.0 wrote its drop-in there, "
                        "NVIDIA/nvidia-container-toolkit#1404); containerd reads conf.d/, so it is ignored: remove it")
    ctk = have(t, "nvidia-ctk")
    if not t.remote.run(f"[ -x {NVIDIA_RUNTIME} ]").ok:
        warnings.append(f"{NVIDIA_RUNTIME} is not installed (nvidia-container-toolkit missing): containers cannot "
                        "start with this default runtime until the toolkit is installed")
    if default == "nvidia" and binary and imports_ok:
        return converged(f"{DROPIN}: default runtime nvidia ({binary})" + _dump_check(t), warnings)
    actions: list = []
    if ctk:
        actions.append(Run(f"nvidia-ctk runtime configure --runtime=containerd --set-as-default "
                           f"--config={CONFIG} --drop-in-config={DROPIN}",
                           "nvidia-ctk runtime configure --runtime=containerd --set-as-default"))
        shown = WriteFile(DROPIN, want, cur)  # what nvidia-ctk writes, for the diff
        plan_note = "by nvidia-ctk"
    else:
        actions.append(WriteFile(DROPIN, want, cur))
        if not imports_ok:
            return fail(f"{CONFIG} does not import {DROPIN_DIR}/*.toml (run the configure step first)")
        plan_note = "by mlplat (nvidia-ctk not installed; same content as nvidia-ctk writes)"
        shown = None
    if t.has_systemd and installed_version(t):
        actions.append(Run("systemctl restart containerd", "restart containerd"))
    o = Outcome(actions=actions, message=f"drop-in {plan_note}", warnings=warnings)
    if shown is not None:
        o.data["expected_dropin"] = shown.content
    return o


def plan_docker(t: Target) -> Outcome:
    """The legacy path of the 2021 notes: Docker with nvidia as default-runtime (daemon.json)."""
    if not t.params.gpu_runtime.docker_legacy:
        return skip("gpu_runtime.docker_legacy is false: Kubernetes uses containerd (dockershim is gone since 1.24)")
    why = nvidia_runtime_wanted(t)
    if why:
        return skip(why)
    from .mirrors import codename

    actions: list = []
    r = t.remote.run("docker --version 2>/dev/null")
    if not r.ok:
        for path, content in docker_repo_files(t, codename(t)).items():
            actions += file_action(t, path, content)
        if t.debian and t.remote.read("/etc/apt/keyrings/docker.asc") is None:
            actions.append(Run(f"install -d -m 0755 /etc/apt/keyrings && curl -fsSL --max-time 60 "
                               f"{docker_repo_base(t)}/gpg -o /etc/apt/keyrings/docker.asc", "fetch Docker's key"))
        actions.append(Run(refresh_command(t), "refresh the package lists", timeout=900))
        actions.append(Run(install_command(t, ["docker-ce", "docker-ce-cli"]), "install Docker CE", timeout=1800))
    old = t.remote.read(DOCKER_DAEMON)
    try:
        content = docker_daemon_json(old, _systemd_cgroup(t))
    except json.JSONDecodeError as e:
        return fail(f"{DOCKER_DAEMON} is not valid JSON ({e}): fix or remove it")
    if old != content:
        actions.append(WriteFile(DOCKER_DAEMON, content, old, backup=True))
        if t.has_systemd:
            actions.append(Run("systemctl restart docker", "restart docker"))
    if t.has_systemd and not any(isinstance(a, Run) and "restart docker" in a.command for a in actions):
        actions += systemd_enable(t, "docker")
    if not actions:
        return converged(f"{(r.stdout or '').strip()}; daemon.json default-runtime nvidia")
    return Outcome(actions=actions, message="docker " + ("installed" if r.ok else "absent"))
