#!/usr/bin/env python3
"""DDP throughput at 1 and N processes in one run, and the scaling efficiency between them.

    python benchmarks/ddp_cpu.py                 # CPU: 1 and 2 processes, gloo, 1 thread each
    python benchmarks/ddp_cpu.py --nprocs 1,2,4,8   # GPU machine: one process per GPU, NCCL

It launches ``lib/mlplat/training/workloads/ddp_bench.py`` (the phase-60 workload, unchanged)
with ``torchrun --standalone --nproc_per_node=N`` for each N, parses its JSON lines with
``mlplat.training.parse`` and prints samples/s per N and
``scaling efficiency = throughput(N) / (N * throughput(1))`` (weak scaling: the per-process
batch is fixed, so ideal throughput grows N-fold).

The same script runs on a GPU machine: with CUDA available the workload picks NCCL and one GPU
per process (``cuda:LOCAL_RANK``); ``--nprocs`` defaults to 1 and every GPU (1,2 on the CPU).
On the CPU every process gets ``--threads`` torch threads (default 1), so N processes use N
cores; with fewer free cores than processes the figure measures contention, not DDP.

Each N is run ``--repeats`` times and the median throughput is reported. The last line of stdout
is one JSON object with every figure (``kind``: ``ddp_scaling``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKLOAD = ROOT / "lib" / "mlplat" / "training" / "workloads" / "ddp_bench.py"

try:
    from mlplat.training.parse import extract_records, scaling_efficiency, summarise_ddp
except ImportError:  # a bare checkout (e.g. a GPU machine without `pip install -e .`)
    sys.path.insert(0, str(ROOT / "lib"))
    from mlplat.training.parse import extract_records, scaling_efficiency, summarise_ddp


def gpu_count() -> int:
    try:
        import torch
    except ImportError:
        sys.exit("torch is not importable: install it first (see README, torch pin)")
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_once(n: int, args, extra: list[str]) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")
           and not k.startswith("PET_")}
    env["OMP_NUM_THREADS"] = str(args.threads)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
           f"--master_port={free_port()}", str(WORKLOAD), "--threads", str(args.threads), *extra]
    started = time.monotonic()
    out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         timeout=args.timeout)
    run = summarise_ddp(extract_records(out.stdout))
    if out.returncode != 0 or not run.ok:
        tail = "\n".join(out.stdout.splitlines()[-25:])
        raise SystemExit(f"N={n}: ddp_bench failed (exit {out.returncode}): {run.problems}\n{tail}")
    return {"n": n, "samples_per_s": run.samples_per_s, "step_time_ms": run.summary["step_time_ms_mean"],
            "backend": run.backend, "device": run.device, "params": run.summary["params"],
            "device_name": run.summary.get("device_name"), "wall_s": round(time.monotonic() - started, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nprocs", default=None, help="comma-separated process counts (default: 1,2 on CPU; 1,<GPUs>)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process on the CPU")
    p.add_argument("--hidden", type=int, default=None, help="MLP width (default 1024 CPU, 4096 GPU)")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=None, help="per process (default 64 CPU, 256 GPU)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 30 CPU, 100 GPU)")
    p.add_argument("--warmup-steps", type=int, default=5)
    p.add_argument("--timeout", type=float, default=600)
    args = p.parse_args(argv)

    gpus = gpu_count()
    default_n = f"1,{gpus}" if gpus > 1 else ("1" if gpus == 1 else "1,2")
    ns = sorted({int(x) for x in (args.nprocs or default_n).split(",")})
    if gpus and max(ns) > gpus:
        p.error(f"--nprocs {max(ns)} > {gpus} GPUs: one process per GPU")
    hidden = args.hidden or (4096 if gpus else 1024)
    batch = args.batch_size or (256 if gpus else 64)
    steps = args.steps or (100 if gpus else 30)
    extra = ["--hidden", str(hidden), "--input-dim", str(hidden), "--layers", str(args.layers),
             "--batch-size", str(batch), "--steps", str(steps), "--warmup-steps", str(args.warmup_steps)]
    cores = os.cpu_count() or 1
    print(f"ddp_cpu: {'%d GPU(s), NCCL' % gpus if gpus else '%d CPU core(s), gloo, %d thread(s)/process' % (cores, args.threads)}; "
          f"MLP {args.layers}x{hidden}, batch {batch}/process, {steps} timed steps, {args.repeats} repeat(s) per N",
          flush=True)
    if not gpus and max(ns) * args.threads > cores:
        print(f"ddp_cpu: note: {max(ns)} processes x {args.threads} thread(s) > {cores} cores", flush=True)
    try:
        load = os.getloadavg()[0]
        print(f"ddp_cpu: load average before the run {load:.2f} on {cores} core(s)", flush=True)
    except OSError:
        load = None

    results = {}
    for n in ns:
        runs = [run_once(n, args, extra) for _ in range(args.repeats)]
        thr = [r["samples_per_s"] for r in runs]
        results[n] = dict(runs[0], samples_per_s=statistics.median(thr), samples_per_s_all=thr,
                          step_time_ms=statistics.median(r["step_time_ms"] for r in runs))
        print(f"  N={n}: {results[n]['samples_per_s']:.1f} samples/s (runs: {', '.join(f'{t:.1f}' for t in thr)})",
              flush=True)
    eff = scaling_efficiency({n: r["samples_per_s"] for n, r in results.items()})
    first = results[ns[0]]
    print(f"\n{'N':>3} {'samples/s':>12} {'per process':>12} {'step ms':>9} {'efficiency':>11}")
    for n in ns:
        r = results[n]
        print(f"{n:>3} {r['samples_per_s']:>12.1f} {r['samples_per_s'] / n:>12.1f} {r['step_time_ms']:>9.2f} "
              f"{eff[n]:>11.3f}")
    print(f"\nbackend {first['backend']}, device {first['device_name'] or first['device']}, "
          f"{first['params']:,} parameters; efficiency = throughput(N) / (N * throughput({ns[0]}))")
    print(json.dumps({"kind": "ddp_scaling", "backend": first["backend"], "device": first["device_name"] or first["device"],
                      "gpus": gpus, "cores": cores, "threads_per_process": args.threads, "load_avg_1m": load,
                      "hidden": hidden, "layers": args.layers, "batch_size": batch, "steps": steps,
                      "params": first["params"],
                      "samples_per_s": {str(n): results[n]["samples_per_s"] for n in ns},
                      "samples_per_s_runs": {str(n): results[n]["samples_per_s_all"] for n in ns},
                      "scaling_efficiency": {str(n): round(eff[n], 4) for n in ns}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
