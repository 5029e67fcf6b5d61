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


def up(state_dir: Path, hosts: int | None = None, cluster: bool = True, network: str | None = None) -> Path:
    """Start `hosts` SSH hosts (None: keep the lab's size, 2 for a new lab) and, unless `cluster` is
    False, the control plane with one KWOK node per host. Running it again keeps what runs and starts
    what is missing. `network` picks another 127.0.x block for the hosts (a second lab beside the
    default one). Returns the params file."""
    from . import hosts as lab_hosts

    _require_root()
    state_dir = Path(state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        params_path = lab_hosts.up(state_dir, count=hosts, network=network)
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


def build_binaries(force: bool = False) -> dict:
    """Build the lab's Go binaries, or confirm the cache holds them."""
    from .build import ensure_binaries

    return ensure_binaries(force=force)
