#!/usr/bin/env python3
"""All-reduce bandwidth sweep over message sizes, reported the way nccl-tests reports it.

Runs inside a training container: the standard library and torch only, nothing downloaded.

    torchrun --nproc_per_node=8 allreduce_sweep.py -b 8 -e 256M -f 2 -w 5 -n 20

For each size (``-b`` to ``-e``, times ``-f``; K/M/G are powers of 1024 as in nccl-tests):
``-w`` warm-up all-reduces, then ``-n`` timed ones back to back, then one synchronisation; the
time per all-reduce is averaged over the ranks, as nccl-tests does by default. Then, as in
nccl-tests (``doc/PERFORMANCE.md``, https://github.com/NVIDIA/nccl-tests/blob/master/doc/PERFORMANCE.md):

* ``algbw = size / time`` (GB/s, 1 GB = 1e9 bytes),
* ``busbw = algbw * 2 * (n - 1) / n`` for all-reduce with ``n`` ranks: the bandwidth each link
  must carry, comparable with the hardware's peak whatever the rank count (0 for one rank).

After the timed loop each size is checked once (every rank contributes rank+1; the sum must be
n(n+1)/2 everywhere); ``wrong`` counts the elements that are not, summed over ranks.

Backend, device and rendezvous work as in ``ddp_bench.py`` (same environment, same bounded
``--rdzv-timeout``, same exit codes): NCCL on ``cuda:$LOCAL_RANK`` when CUDA is available, gloo
on the CPU otherwise.

Output: JSON lines on stdout, ``{"schema":1,"kind":...}`` first on the line. Rank 0 writes one
``allreduce`` record per size (``size_bytes``, ``count``, ``time_us``, ``time_us_max``,
``algbw_gbps``, ``busbw_gbps``, ``wrong``) and an ``allreduce_summary`` (``avg_busbw_gbps``, the
mean over sizes like nccl-tests' "Avg bus bandwidth", and the maxima). Failures: ``error``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sys
import threading
import time
from typing import NoReturn

SCHEMA = 1
PROG = "allreduce_sweep"

DTYPES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int32": 4}


# --- output and rendezvous (kept the same as ddp_bench.py; each script stands alone) -----------

def emit(kind: str, **fields) -> None:
    """One JSON line on stdout, written and flushed in one piece."""
    rec = {"schema": SCHEMA, "kind": kind}
    rec.update(fields)
    sys.stdout.write(json.dumps(rec, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def fail(stage: str, message: str, code: int = 2, **fields) -> NoReturn:
    emit("error", stage=stage, message=message, **fields)
    sys.stderr.write(f"{PROG}: ERROR {stage}: {message}\n")
    sys.stderr.flush()
    os._exit(code)


class Watchdog:
    def __init__(self) -> None:
        self._timer: threading.Timer | None = None

    def arm(self, stage: str, seconds: float, message: str, **fields) -> None:
        self.cancel()
        self._timer = threading.Timer(seconds, fail, args=(stage, message, 3), kwargs=fields)
        self._timer.daemon = True
        self._timer.start()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _int_env(env, name: str, default: int | None = None) -> int | None:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        fail("setup", f"{name}={raw!r} is not an integer")


def launch_layout(env=None) -> dict:
    """Rank layout from torchrun's, the training operator's or no environment (see ddp_bench.py)."""
    env = os.environ if env is None else env
    if "TORCHELASTIC_RUN_ID" in env or "LOCAL_WORLD_SIZE" in env:
        launcher = "torchrun"
    elif "WORLD_SIZE" in env or "RANK" in env:
        launcher = "env"
    else:
        launcher = "single"
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        env.setdefault("MASTER_PORT", str(_free_port()))
        env["RANK"], env["WORLD_SIZE"] = "0", "1"
    rank = _int_env(env, "RANK", 0)
    world = _int_env(env, "WORLD_SIZE", 1)
    raw_nproc = env.get("PET_NPROC_PER_NODE", "")
    nproc = int(raw_nproc) if raw_nproc.isdigit() else None
    if launcher == "env" and nproc and nproc > 1:
        fail("setup", f"PET_NPROC_PER_NODE={nproc} but this process was not started by torchrun: "
                      f"WORLD_SIZE={world} counts {nproc} processes per pod that will never start. "
                      f"Run the script as `torchrun {os.path.basename(sys.argv[0])} ...` "
                      f"(torchrun reads PET_* itself), or set nprocPerNode to 1.")
    if world < 1 or not 0 <= rank < world:
        fail("setup", f"RANK={rank} is outside WORLD_SIZE={world}")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not env.get(name):
            fail("setup", f"{name} is not set; the launcher (torchrun, the training operator) "
                          f"sets it, or run without RANK/WORLD_SIZE for a single process")
    return {
        "launcher": launcher, "rank": rank, "world_size": world,
        "local_rank": _int_env(env, "LOCAL_RANK", 0),
        "master_addr": env["MASTER_ADDR"], "master_port": int(env["MASTER_PORT"]),
        "host": socket.gethostname(),
    }


def pick_backend(requested: str | None, torch) -> str:
    choice = (requested or os.environ.get("MLPLAT_BACKEND") or "auto").lower()
    if choice == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    if choice not in ("nccl", "gloo"):
        fail("setup", f"backend {choice!r}: use nccl, gloo or auto")
    if choice == "nccl" and not torch.cuda.is_available():
        fail("setup", "backend nccl asked for, but CUDA is not available in this container")
    return choice


def pick_device(backend: str, layout: dict, torch):
    if backend != "nccl":
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if layout["local_rank"] >= count:
        fail("setup", f"LOCAL_RANK={layout['local_rank']} but only {count} GPU(s) are visible: "
                      f"nprocPerNode must not exceed the GPUs per pod (nvidia.com/gpu limit)")
    torch.cuda.set_device(layout["local_rank"])
    return torch.device("cuda", layout["local_rank"])


def rendezvous(backend: str, device, layout: dict, timeout_s: float, watchdog: Watchdog, torch) -> None:
    import datetime

    import torch.distributed as dist

    where = (f"{layout['world_size']} rank(s) at {layout['master_addr']}:{layout['master_port']} "
             f"(this is rank {layout['rank']}, started by {layout['launcher']})")
    advice = ("Check that WORLD_SIZE equals the processes actually started (a PyTorchJob sets "
              "WORLD_SIZE = replicas x nprocPerNode), that every pod of the job is Running, and "
              "that MASTER_ADDR:MASTER_PORT is reachable from every pod (NetworkPolicy, an Istio "
              "sidecar, a wrong NCCL_SOCKET_IFNAME).")
    watchdog.arm("rendezvous", timeout_s * 2 + 30,
                 f"no rendezvous after {timeout_s * 2 + 30:.0f} s waiting for {where}; torch did not "
                 f"return. {advice}", rank=layout["rank"], world_size=layout["world_size"])
    started = time.monotonic()
    try:
        kwargs = dict(backend=backend, init_method="env://", rank=layout["rank"],
                      world_size=layout["world_size"], timeout=datetime.timedelta(seconds=timeout_s))
        if backend == "nccl":
            kwargs["device_id"] = device
        try:
            dist.init_process_group(**kwargs)
        except TypeError:  # torch < 2.3 has no device_id
            kwargs.pop("device_id", None)
            dist.init_process_group(**kwargs)
        probe = torch.ones(1, device=device)
        dist.all_reduce(probe)
        if int(probe.item()) != layout["world_size"]:
            raise RuntimeError(f"probe all-reduce gave {probe.item()}, expected {layout['world_size']}")
    except Exception as e:
        first = str(e).strip().splitlines()[0].rstrip(".") if str(e).strip() else type(e).__name__
        fail("rendezvous", f"rendezvous failed after {time.monotonic() - started:.0f} s waiting for "
                           f"{where}: {type(e).__name__}: {first}. {advice}",
             rank=layout["rank"], world_size=layout["world_size"], timeout_s=timeout_s)
    finally:
        watchdog.cancel()


def gather_floats(values: list[float], device, torch) -> list[list[float]]:
    """Every rank's list of floats (plain tensors: all_gather_object would need numpy)."""
    import torch.distributed as dist

    mine = torch.tensor(values, dtype=torch.float64, device=device)
    out = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(out, mine)
    return [o.tolist() for o in out]


def gather_strings(text: str, device, torch, size: int = 256) -> list[str]:
    """Every rank's string (up to size-2 bytes of UTF-8), as fixed-size byte tensors."""
    import torch.distributed as dist

    raw = text.encode("utf-8")[: size - 2]
    mine = torch.zeros(size, dtype=torch.uint8, device=device)
    mine[0], mine[1] = len(raw) // 256, len(raw) % 256
    if raw:
        mine[2:2 + len(raw)] = torch.tensor(list(raw), dtype=torch.uint8, device=device)
    out = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(out, mine)
    res = []
    for o in out:
        vals = o.tolist()
        n = vals[0] * 256 + vals[1]
        res.append(bytes(vals[2:2 + n]).decode("utf-8", "replace"))
    return res


# --- the sweep ---------------------------------------------------------------------------------

def parse_size(text: str) -> int:
    """'8', '64K', '256M', '1G' (powers of 1024, as nccl-tests reads -b/-e)."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMGkmg]?)[Bb]?\s*", str(text))
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 8, 64K, 256M, 1G)")
    return int(m.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m.group(2).upper()]


def sizes(min_bytes: int, max_bytes: int, factor: int) -> list[int]:
    out, s = [], min_bytes
    while s <= max_bytes:
        out.append(s)
        s *= factor
    return out


def _sig(x: float) -> float:
    """Six significant digits: enough for any bandwidth, and 8-byte sizes do not round to 0."""
    return float(f"{x:.6g}")


def bus_factor(world_size: int) -> float:
    """nccl-tests' bus bandwidth factor for all-reduce: 2(n-1)/n."""
    return 2.0 * (world_size - 1) / world_size


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("-b", "--min-bytes", type=parse_size, default=parse_size("8"))
    p.add_argument("-e", "--max-bytes", type=parse_size, default=parse_size("256M"))
    p.add_argument("-f", "--step-factor", type=int, default=2)
    p.add_argument("-w", "--warmup-iters", type=int, default=5)
    p.add_argument("-n", "--iters", type=int, default=20)
    p.add_argument("-d", "--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--no-check", action="store_true", help="skip the correctness check per size")
    p.add_argument("--backend", default=None, help="nccl, gloo or auto (default: $MLPLAT_BACKEND or auto)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads per process (0: leave)")
    p.add_argument("--rdzv-timeout", type=float, default=float(os.environ.get("MLPLAT_RDZV_TIMEOUT", 300)),
                   help="seconds to wait for every rank (default: $MLPLAT_RDZV_TIMEOUT or 300)")
    p.add_argument("--tag", default="", help="free text copied into every record (e.g. a run id)")
    args = p.parse_args(argv)
    if args.step_factor < 2:
        p.error("-f/--step-factor must be at least 2")
    if args.min_bytes < DTYPES[args.dtype] or args.max_bytes < args.min_bytes:
        p.error(f"need {DTYPES[args.dtype]} <= min-bytes <= max-bytes")
    if args.iters < 1 or args.warmup_iters < 0 or args.rdzv_timeout <= 0:
        p.error("-n must be >= 1, -w >= 0, --rdzv-timeout > 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    layout = launch_layout()
    try:
        import torch
        import torch.distributed  # noqa: F401 (fail here, not later, on a torch without it)
    except ImportError as e:
        fail("setup", f"torch is not importable in this container: {e}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    backend = pick_backend(args.backend, torch)
    device = pick_device(backend, layout, torch)
    rendezvous(backend, device, layout, args.rdzv_timeout, Watchdog(), torch)
    try:
        return sweep(args, layout, backend, device, torch)
    except Exception as e:  # a peer that died, a collective that timed out: say so as a record
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        fail("run", f"rank {layout['rank']} of {layout['world_size']} failed after the rendezvous: "
                    f"{type(e).__name__}: {first}. If a peer died first, its pod's log says why.",
             rank=layout["rank"], world_size=layout["world_size"])


def sweep(args, layout: dict, backend: str, device, torch) -> int:
    """The measurement itself, once every rank has joined."""
    import torch.distributed as dist

    n = layout["world_size"]
    dtype = getattr(torch, args.dtype)
    elem = DTYPES[args.dtype]
    hosts = gather_strings(layout["host"], device, torch)
    common = {"world_size": n, "backend": backend, "device": str(device), "host": layout["host"],
              "nodes": len(set(hosts)), "dtype": args.dtype, "op": "sum",
              "warmup_iters": args.warmup_iters, "iters": args.iters,
              "torch_version": torch.__version__, "tag": args.tag}
    if device.type == "cuda":
        common["device_name"] = torch.cuda.get_device_name(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    results = []
    for size in sizes(args.min_bytes, args.max_bytes, args.step_factor):
        count = size // elem
        nbytes = count * elem
        buf = torch.zeros(count, dtype=dtype, device=device)  # zeros: sums stay finite
        for _ in range(args.warmup_iters):
            dist.all_reduce(buf)
        sync()
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(args.iters):
            dist.all_reduce(buf)
        sync()
        per_iter = (time.perf_counter() - t0) / args.iters
        times = torch.tensor([per_iter, per_iter], dtype=torch.float64, device=device)
        t_sum = times[:1].clone()
        dist.all_reduce(t_sum)
        t_max = times[1:].clone()
        dist.all_reduce(t_max, op=dist.ReduceOp.MAX)
        t_avg = float(t_sum.item()) / n
        wrong = None
        if not args.no_check:
            buf.fill_(layout["rank"] + 1)
            dist.all_reduce(buf)
            bad = (buf != n * (n + 1) / 2).sum().to(torch.float64).reshape(1)
            dist.all_reduce(bad)
            wrong = int(bad.item())
        algbw = nbytes / t_avg / 1e9 if t_avg > 0 else 0.0
        rec = dict(size_bytes=nbytes, count=count, time_us=round(t_avg * 1e6, 3),
                   time_us_max=round(float(t_max.item()) * 1e6, 3),
                   algbw_gbps=_sig(algbw), busbw_gbps=_sig(algbw * bus_factor(n)), wrong=wrong)
        results.append(rec)
        if layout["rank"] == 0:
            emit("allreduce", rank=0, **common, **rec)
        del buf
    if layout["rank"] == 0 and results:
        wrongs = [r["wrong"] for r in results if r["wrong"] is not None]
        emit("allreduce_summary", rank=0, **common, sizes=len(results),
             min_bytes=results[0]["size_bytes"], max_bytes=results[-1]["size_bytes"],
             avg_busbw_gbps=_sig(sum(r["busbw_gbps"] for r in results) / len(results)),
             max_busbw_gbps=max(r["busbw_gbps"] for r in results),
             max_algbw_gbps=max(r["algbw_gbps"] for r in results),
             wrong_total=sum(wrongs) if wrongs else None)
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
