"""Fan-out benchmark: host facts on 1 lab host vs N lab hosts, and mlplat vs Ansible, in one run.

    python benchmarks/fanout.py --out outputs/fanout.json [--hosts 8] [--reps 7] [--state-dir DIR]

Brings up N lab hosts (``mlplat.lab.hosts``; reused when --state-dir holds a running lab, else a
fresh lab in a free 127.0.x block, taken down at the end), then times, interleaved rep by rep:

- ``gather_facts`` on 1 host and on N hosts, cold (a new HostPool each time: TCP, SSH handshake,
  authentication and the facts script) and warm (connections already open, as in the preflight
  notebook, which connects before gathering facts);
- ``ansible all -i <inventory> -m setup -f N`` (ansible-core ad hoc, same hosts, same key, same
  pinned known_hosts, its default ControlPersist left on, so its repetitions after the first reuse
  connections, and the Python interpreter given, so no discovery round trip).

Prints medians and the ratios t(N)/t(1) (target <= 1.5) and mlplat(N)/ansible(N) (target <= 0.5),
and writes every figure, the machine's CPU count and load averages to the JSON file given by --out.
It also measures the CPU time each host costs on both sides: on the lab the N "servers" run on the
same CPUs as mlplat, so t(N) carries their work too, which real servers do on their own CPUs.
The figures depend on the machine and on what else runs on it (the load averages say how busy it was).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlplat.hosts import HostPool, gather_facts
from mlplat.lab import hosts as lab
from mlplat.params import load_params

TARGET_SCALING = 1.5
TARGET_VS_ANSIBLE = 0.5


def _time_facts(params_path: Path, names: list[str], warm: bool) -> float:
    pool = HostPool.from_file(params_path)
    try:
        if warm:
            assert all(r.ok for r in pool.connect(hosts=names))
        t0 = time.perf_counter()
        results = gather_facts(pool, hosts=names)
        elapsed = time.perf_counter() - t0
    finally:
        pool.close()
    bad = [f"{r.host}: {r.message}" for r in results if not r.ok]
    if bad:
        raise SystemExit("facts failed: " + "; ".join(bad))
    return elapsed


def _cpu_per_host(state: Path, params_path: Path, names: list[str], reps: int) -> dict[str, float]:
    """CPU seconds per host and cold gather, on this side (mlplat, all threads) and on the lab
    hosts' side (sshd, the shell and the probes): on a lab they share the same CPUs."""
    def server() -> float:
        return sum(lab.cpu_seconds(state).values())

    s0, c0 = server(), sum(os.times()[:2])
    for _ in range(reps):
        _time_facts(params_path, names, warm=False)
    time.sleep(0.5)  # let every sshd reap its finished connection, which books the CPU time
    n = reps * len(names)
    return {"client_cold": round((sum(os.times()[:2]) - c0) / n, 4), "server_cold": round((server() - s0) / n, 4)}


def _ansible_bin() -> str:
    # The script beside this interpreter: a pyenv shim would add its own start-up to every run.
    here = Path(sys.executable).parent / "ansible"
    found = str(here) if here.exists() else shutil.which("ansible")
    if not found:
        raise SystemExit("ansible not found: pip install ansible-core (it is in the [test] extra)")
    return found


def _remote_python() -> str:
    # Lab hosts see the machine's /usr and /root (copy-on-write): the distribution's python3 if
    # there is one, else this interpreter (e.g. a pyenv or conda one).
    return "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable


def _ansible_setup(state: Path, params_path: Path, forks: int) -> tuple[Path, dict]:
    """Write an inventory for the lab hosts and the environment for ``ansible`` ad hoc runs."""
    params = load_params(params_path)
    python = _remote_python()
    ssh = params.ssh
    lines = ["[lab]"]
    for h in params.hosts:
        lines.append(f"{h.name} ansible_host={h.address} ansible_port={h.ssh.port or ssh.port}")
    lines += ["", "[lab:vars]", f"ansible_user={ssh.user}", f"ansible_ssh_private_key_file={ssh.key_file}",
              f"ansible_python_interpreter={python}",
              # The same pinning as mlplat: only the lab's known_hosts, unknown keys refused.
              f"ansible_ssh_common_args='-o UserKnownHostsFile={ssh.known_hosts} -o GlobalKnownHostsFile=/dev/null "
              f"-o StrictHostKeyChecking=yes'"]
    inv = state / "ansible-inventory.ini"
    inv.write_text("\n".join(lines) + "\n")
    work = state / "ansible"
    (work / "cp").mkdir(parents=True, exist_ok=True)
    (work / "tmp").mkdir(exist_ok=True)
    # An empty config of its own: no ansible.cfg of the machine or the working directory applies.
    (work / "ansible.cfg").write_text("[defaults]\n")
    env = dict(os.environ, ANSIBLE_CONFIG=str(work / "ansible.cfg"), ANSIBLE_HOST_KEY_CHECKING="True",
               ANSIBLE_SSH_CONTROL_PATH_DIR=str(work / "cp"), ANSIBLE_LOCAL_TEMP=str(work / "tmp"),
               ANSIBLE_FORKS=str(forks), ANSIBLE_NOCOLOR="1")
    return inv, env


def _time_ansible(inv: Path, env: dict, forks: int, hosts: int) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([_ansible_bin(), "all", "-i", str(inv), "-m", "setup", "-f", str(forks), "-o"],
                          env=env, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - t0
    ok = sum(1 for ln in proc.stdout.splitlines() if " | SUCCESS => " in ln)
    if proc.returncode != 0 or ok != hosts:
        raise SystemExit(f"ansible setup failed (exit {proc.returncode}, {ok}/{hosts} ok):\n"
                         f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="where to write the JSON of figures")
    ap.add_argument("--hosts", type=int, default=8)
    ap.add_argument("--reps", type=int, default=7, help="repetitions of each measurement (median reported)")
    ap.add_argument("--state-dir", help="lab state directory to use (kept); default: a temporary lab")
    args = ap.parse_args(argv)

    own = args.state_dir is None
    state = Path(args.state_dir or tempfile.mkdtemp(prefix="mlplat-fanout-")).absolute()
    load_before = os.getloadavg()
    network = None if (state / lab.STATE_FILE).exists() else lab.free_network(args.hosts, start=os.getpid())
    t0 = time.perf_counter()
    params_path = lab.up(state, args.hosts, network=network)
    up_s = time.perf_counter() - t0
    try:
        names = [h.name for h in load_params(params_path).hosts][: args.hosts]
        inv, env = _ansible_setup(state, params_path, args.hosts)
        # One untimed round of each: page cache, Python imports, Ansible's module cache.
        _time_facts(params_path, names, warm=False)
        _time_ansible(inv, env, args.hosts, len(names))

        cpu = _cpu_per_host(state, params_path, names, args.reps)
        runs: dict[str, list[float]] = {k: [] for k in ("cold_1", "cold_n", "warm_1", "warm_n", "ansible_n")}
        for _ in range(args.reps):
            runs["cold_1"].append(_time_facts(params_path, names[:1], warm=False))
            runs["cold_n"].append(_time_facts(params_path, names, warm=False))
            runs["warm_1"].append(_time_facts(params_path, names[:1], warm=True))
            runs["warm_n"].append(_time_facts(params_path, names, warm=True))
            runs["ansible_n"].append(_time_ansible(inv, env, args.hosts, len(names)))
    finally:
        if own:
            lab.down(state, purge=True)

    med = {k: statistics.median(v) for k, v in runs.items()}
    n = len(names)
    ratios = {
        "cold_n_over_1": med["cold_n"] / med["cold_1"],
        "warm_n_over_1": med["warm_n"] / med["warm_1"],
        "mlplat_cold_n_over_ansible_n": med["cold_n"] / med["ansible_n"],
        "mlplat_warm_n_over_ansible_n": med["warm_n"] / med["ansible_n"],
    }
    report = {
        "hosts": n, "reps": args.reps, "lab_up_s": round(up_s, 3),
        "median_s": {k: round(v, 4) for k, v in med.items()},
        "runs_s": {k: [round(x, 4) for x in v] for k, v in runs.items()},
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
        "cpu_per_host_s": cpu,
        "targets": {"n_over_1_max": TARGET_SCALING, "mlplat_over_ansible_max": TARGET_VS_ANSIBLE,
                    "cold_n_over_1_met": ratios["cold_n_over_1"] <= TARGET_SCALING,
                    "warm_n_over_1_met": ratios["warm_n_over_1"] <= TARGET_SCALING,
                    "mlplat_cold_over_ansible_met": ratios["mlplat_cold_n_over_ansible_n"] <= TARGET_VS_ANSIBLE},
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
                    "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
        "ansible": subprocess.run([_ansible_bin(), "--version"], capture_output=True, text=True).stdout.split("\n")[0],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")

    print(f"facts, {args.reps} reps, medians ({os.cpu_count()} CPUs, load {report['machine']['loadavg_before'][0]}):")
    print(f"  mlplat cold  1 host {med['cold_1']:.3f}s  {n} hosts {med['cold_n']:.3f}s  ratio {ratios['cold_n_over_1']:.2f}"
          f"  (target <= {TARGET_SCALING})")
    print(f"  mlplat warm  1 host {med['warm_1']:.3f}s  {n} hosts {med['warm_n']:.3f}s  ratio {ratios['warm_n_over_1']:.2f}")
    print(f"  ansible setup {n} hosts {med['ansible_n']:.3f}s   mlplat/ansible cold {ratios['mlplat_cold_n_over_ansible_n']:.3f}"
          f"  warm {ratios['mlplat_warm_n_over_ansible_n']:.3f}  (target <= {TARGET_VS_ANSIBLE})")
    print(f"  CPU per host and cold gather: mlplat {cpu['client_cold']*1000:.1f} ms, the lab host's sshd and probes "
          f"{cpu['server_cold']*1000:.1f} ms, all on these {os.cpu_count()} CPUs")
    print(f"figures: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
