"""`mlplat lab up/down/status/build`: the lab's SSH hosts and its cluster, started and stopped together.

The lab hosts (`hosts.py`) and the cluster (`cluster.py`, binaries from `build.py`) know nothing of
each other; this module starts them in order and records the cluster's kubeconfig in the lab's
params file, which is all a phase ever sees of the lab.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import yaml


class LabError(RuntimeError):
    """The lab could not be brought up or down; the message says what and where."""


def _require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (mount and UTS namespaces, overlay mounts, sshd on loopback); "
                       "run it as root, e.g. in a disposable VM or container")


def _update_params(path: Path, updates: dict) -> None:
    data = yaml.safe_load(path.read_text()) or {}
    for section, values in updates.items():
        data.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def up(state_dir: Path, hosts: int | None = None, cluster: bool = True, network: str | None = None,
       nodes: str | None = None) -> Path:
    """Start `hosts` SSH hosts (None: keep the lab's size, 2 for a new lab) and, unless `cluster` is
    False, the control plane with one KWOK node per host. Running it again keeps what runs and starts
    what is missing. `network` picks another 127.0.x block for the hosts (a second lab beside the
    default one). `nodes="real"`: hosts that become real Kubernetes nodes (no KWOK cluster: phase 30
    builds the cluster with kubeadm; see :func:`_real_up`). Returns the params file."""
    from . import hosts as lab_hosts

    _require_root()
    state_dir = Path(state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    if nodes == "real" or (nodes is None and _recorded_nodes(state_dir) == "real"):
        return _real_up(state_dir, hosts, network)
    try:
        params_path = lab_hosts.up(state_dir, count=hosts, network=network, nodes=nodes)
    except Exception as e:  # report the failing part by name; details are in the message
        raise LabError(f"lab hosts: {e}") from e
    if cluster:
        from . import cluster as lab_cluster

        data = yaml.safe_load(params_path.read_text())
        sim = (data.get("lab") or {}).get("simulated_gpus", 4)
        nodes = [{"name": h["name"], "gpus": sim, "roles": h["roles"]} for h in data["hosts"]]
        kubeconfig = state_dir / "kubeconfig"
        try:
            lab_cluster.up(state_dir / "cluster", kubeconfig, nodes, logs_file=state_dir / "logs" / "default.log")
        except Exception as e:
            raise LabError(f"lab cluster: {e}") from e
        _update_params(params_path, {"kubernetes": {"existing_kubeconfig": str(kubeconfig)}})
        # PyTorchJobs and TFJobs need a controller: the real training operator, out of cluster. KWOK
        # runs no containers, so the pods' logs are the output of a real CPU run of the same
        # workloads, prepared once and cached (about a minute the first time).
        from . import workload_logs

        try:
            lab_cluster.start_training_operator(state_dir / "cluster", kubeconfig)
            workload_logs.prepare(state_dir / "cluster", kubeconfig, params_path)
        except Exception as e:
            raise LabError(f"lab cluster: {e}") from e
    return params_path


def _recorded_nodes(state_dir: Path) -> str | None:
    from . import hosts as lab_hosts

    recorded = lab_hosts._read_state(state_dir)
    return recorded[0].nodes if recorded else None


REAL_NODE_BINARIES = ("kubeadm", "kubelet", "kubectl")


def _real_up(state_dir: Path, hosts: int | None, network: str | None) -> Path:
    """Hosts that can be real nodes, the binaries phase 30 installs on them, and the image kit
    (every image the cluster, the training operator and phase 60 run), all built locally and
    cached; the params point phase 30 and 50 at them. No cluster: phase 30 makes it."""
    from . import build
    from . import hosts as lab_hosts
    from . import images as lab_images

    try:
        binaries = build.ensure_binaries(components=build.NODE_SETS["real"])
    except Exception as e:
        raise LabError(f"lab binaries: {e}") from e
    bin_dir = state_dir / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in REAL_NODE_BINARIES:
        src = _find_binary(binaries, name)
        _link(bin_dir / name, src)
    try:
        built = lab_images.ensure_images(binaries=binaries)
    except Exception as e:
        raise LabError(f"lab images: {e}") from e
    kit = state_dir / "images"
    kit.mkdir(exist_ok=True)
    wanted = set()
    for img in built:
        wanted.add(Path(img.path).name)
        _link(kit / Path(img.path).name, img.path)
    for stale in kit.glob("*.tar"):
        if stale.name not in wanted:
            stale.unlink()
    try:
        params_path = lab_hosts.up(state_dir, count=hosts, network=network, nodes="real")
    except Exception as e:
        raise LabError(f"lab hosts: {e}") from e
    trainer = next((i.name for i in built if "/mlplat/trainer:" in i.name), None)
    data = yaml.safe_load(params_path.read_text()) or {}
    k = dict(data.get("kubernetes") or {})
    k.pop("existing_kubeconfig", None)
    k.update(REAL_KUBERNETES)
    k["image_archives"] = str(kit)
    data["kubernetes"] = k
    data.setdefault("lab", {})["binaries_dir"] = str(bin_dir)
    kf = dict(data.get("kubeflow") or {})
    # The v1 training operator alone: cert-manager, Trainer v2 and Istio have no images built here.
    kf["components"] = "training-operator"
    kf["image_mirror"] = {"mode": "node-import", "archive_dir": str(kit)}
    data["kubeflow"] = kf
    if trainer:
        data.setdefault("validation", {})["image"] = trainer
    params_path.write_text(yaml.safe_dump(data, sort_keys=False))
    return params_path


# What phase 30 needs to build a cluster on the lab's hosts (reference/real-nodes.md, parts 4 and 5):
# cgroup v1 (kubeadm's SystemVerification check ignored, named in its config step), the cgroupfs
# driver, no eviction or image GC on the machine's one shared disk, no global conntrack sizing
# (nf_conntrack_max is not writable from a network namespace), and flannel from the offline bundle
# (vxlan between the hosts' lab addresses; its images are built by mlplat.lab.images).
REAL_KUBERNETES = {
    "cgroup_driver": "cgroupfs",
    "allow_cgroup_v1": True,
    "cni": "flannel",
    "kubelet_config": {
        "imageGCHighThresholdPercent": 100,
        "evictionHard": {"nodefs.available": "0%", "imagefs.available": "0%", "nodefs.inodesFree": "0%"},
        "failSwapOn": False,
    },
    "kube_proxy_config": {"conntrack": {"maxPerCore": 0}},
    "net_check_image": "docker.io/library/busybox:1.36.1",
}


def _link(link: Path, target) -> None:
    """``link`` -> ``target``, replaced only when it points elsewhere."""
    if not link.is_symlink() or os.readlink(link) != str(target):
        link.unlink(missing_ok=True)
        link.symlink_to(target)


def _find_binary(binaries: dict, name: str) -> Path:
    if name not in binaries:
        raise LabError(f"lab binaries: {name} was not built (mlplat lab build --nodes real)")
    return Path(binaries[name])


def down(state_dir: Path) -> None:
    """Stop the cluster and the hosts; nothing is left running or mounted."""
    from . import hosts as lab_hosts

    _require_root()
    state_dir = Path(state_dir).resolve()
    errors = []
    if (state_dir / "cluster").exists():
        from . import cluster as lab_cluster

        try:
            lab_cluster.down(state_dir / "cluster")
        except Exception as e:
            errors.append(f"cluster: {e}")
    try:
        lab_hosts.down(state_dir)
    except Exception as e:
        errors.append(f"hosts: {e}")
    if errors:
        raise LabError("; ".join(errors))


def status_table(state_dir: Path) -> pd.DataFrame:
    """One row per lab component (each host's sshd, each control-plane process): ok and detail."""
    from . import hosts as lab_hosts

    state_dir = Path(state_dir).resolve()
    rows = []
    for h in lab_hosts.status(state_dir):
        rows.append({"component": f"host {h['name']}", "ok": bool(h.get("ok")),
                     "detail": f"{h.get('address')} pid {h.get('pid')}"})
    if (state_dir / "cluster").exists():
        from . import cluster as lab_cluster

        for c in lab_cluster.status(state_dir / "cluster"):
            rows.append({"component": c["component"], "ok": bool(c["ok"]), "detail": c.get("detail", "")})
    if not rows:
        rows.append({"component": "lab", "ok": False, "detail": f"no lab under {state_dir} (mlplat lab up)"})
    return pd.DataFrame(rows, columns=["component", "ok", "detail"])


def build_binaries(force: bool = False, nodes: str = "kwok") -> dict:
    """Build the lab's Go binaries, or confirm the cache holds them. ``nodes``: a key of
    :data:`mlplat.lab.build.NODE_SETS` (kwok: the default lab; real: kubeadm nodes; all)."""
    from .build import NODE_SETS, ensure_binaries

    return ensure_binaries(force=force, components=NODE_SETS[nodes])
