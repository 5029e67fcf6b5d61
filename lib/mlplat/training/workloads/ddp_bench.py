#!/usr/bin/env python3
"""DistributedDataParallel throughput benchmark on a synthetic model and synthetic data.

Runs inside a training container: it needs the standard library and torch, nothing else, and
downloads nothing (no dataset, no weights). Mount it from a ConfigMap or bake it into an image.

    torchrun --nproc_per_node=2 ddp_bench.py --steps 20          # one node, two processes
    python ddp_bench.py                                           # one process, world of one

Backend: ``nccl`` when CUDA is available, else ``gloo``; ``--backend`` or ``$MLPLAT_BACKEND``
overrides it. Each process uses ``cuda:$LOCAL_RANK`` with NCCL, the CPU with gloo.

Which environment is read (rendezvous is ``init_method=env://``):

* started by **torchrun** (also what Trainer v2's torch runtime and a PyTorchJob with
  ``nprocPerNode`` run; recognised by ``TORCHELASTIC_RUN_ID`` / ``LOCAL_WORLD_SIZE``): torchrun
  sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``GROUP_RANK`` (the node),
  ``MASTER_ADDR`` and ``MASTER_PORT`` per process, overwriting what the pod had; the node layout
  torchrun itself reads comes from ``PET_NNODES``, ``PET_NPROC_PER_NODE``, ``PET_NODE_RANK``,
  ``PET_MASTER_ADDR``/``PET_MASTER_PORT`` that the operator injects.
* started by **python directly** in a PyTorchJob pod (one process per pod): the training operator
  sets ``RANK`` (master 0, worker i -> i+1), ``WORLD_SIZE`` (replicas x nprocPerNode, so
  nprocPerNode must be 1 or unset here), ``MASTER_ADDR`` and ``MASTER_PORT``; ``LOCAL_RANK`` is
  taken as 0. A pod with ``PET_NPROC_PER_NODE`` > 1 but no torchrun is refused at once, because
  its ``WORLD_SIZE`` counts processes that will never start.
* **nothing set**: a world of one on 127.0.0.1 and a free port (the 1-process baseline).

A broken rendezvous (a ``WORLD_SIZE`` larger than the processes that start, a master that never
comes up) ends with a clear ``rendezvous`` error within ``--rdzv-timeout`` seconds (plus the
connect retries of torch's TCPStore), and a watchdog thread ends the process if torch itself
hangs past that. Exit codes: 0 ok, 2 bad setup or rendezvous failure, 3 watchdog.

Output: one JSON object per line on stdout, ``{"schema":1,"kind":...}`` first, nothing before it
on the line, so a parser can pick the lines out of a log in which NCCL_DEBUG lines interleave.
Kinds: ``ddp_rank`` (every rank: its own step times and samples/s) and ``ddp_summary`` (rank 0:
total samples/s over all ranks), ``error`` (stage, message). Units are in the field names.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
import threading
import time
from typing import NoReturn

SCHEMA = 1
PROG = "ddp_bench"


# --- output ------------------------------------------------------------------------------------

def emit(kind: str, **fields) -> None:
    """One JSON line on stdout, written and flushed in one piece (lines under 4 KiB stay whole
    on a pipe shared with other processes)."""
    rec = {"schema": SCHEMA, "kind": kind}
    rec.update(fields)
    sys.stdout.write(json.dumps(rec, separators=(",", ":"), sort_keys=False) + "\n")
    sys.stdout.flush()


def fail(stage: str, message: str, code: int = 2, **fields) -> NoReturn:
    """Report a failure on stdout (JSON) and stderr (text), then leave without running torch's
    teardown, which can itself block on a half-built process group."""
    emit("error", stage=stage, message=message, **fields)
    sys.stderr.write(f"{PROG}: ERROR {stage}: {message}\n")
    sys.stderr.flush()
    os._exit(code)


class Watchdog:
    """Ends the process with a clear message when a stage overruns its deadline."""

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


# --- rendezvous --------------------------------------------------------------------------------

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
    """Rank layout from the launcher's environment (see the module docstring). Sets
    MASTER_ADDR/MASTER_PORT/RANK/WORLD_SIZE in ``env`` for the single-process case."""
    env = os.environ if env is None else env
    torchrun = "TORCHELASTIC_RUN_ID" in env or "LOCAL_WORLD_SIZE" in env
    if torchrun:
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
    local_rank = _int_env(env, "LOCAL_RANK", 0)
    raw_nproc = env.get("PET_NPROC_PER_NODE", "")  # may also be auto, cpu or gpu
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
        "launcher": launcher,
        "rank": rank,
        "world_size": world,
        "local_rank": local_rank,
        "local_world_size": _int_env(env, "LOCAL_WORLD_SIZE", 1),
        "node_rank": _int_env(env, "GROUP_RANK", rank if launcher != "torchrun" else 0),
        "master_addr": env["MASTER_ADDR"],
        "master_port": int(env["MASTER_PORT"]),
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
    """init_process_group with a bounded timeout, then one all-reduce that every rank must join."""
    import datetime

    import torch.distributed as dist

    where = (f"{layout['world_size']} rank(s) at {layout['master_addr']}:{layout['master_port']} "
             f"(this is rank {layout['rank']}, started by {layout['launcher']})")
    advice = ("Check that WORLD_SIZE equals the processes actually started (a PyTorchJob sets "
              "WORLD_SIZE = replicas x nprocPerNode), that every pod of the job is Running, and "
              "that MASTER_ADDR:MASTER_PORT is reachable from every pod (NetworkPolicy, an Istio "
              "sidecar, a wrong NCCL_SOCKET_IFNAME).")
    # TCPStore retries its connects, so a client can take about 1.5x the timeout to give up;
    # the watchdog only fires when torch itself does not return.
    watchdog.arm("rendezvous", timeout_s * 2 + 30,
                 f"no rendezvous after {timeout_s * 2 + 30:.0f} s waiting for {where}; torch did not "
                 f"return. {advice}", rank=layout["rank"], world_size=layout["world_size"])
    started = time.monotonic()
    try:
        kwargs = dict(backend=backend, init_method="env://", rank=layout["rank"],
                      world_size=layout["world_size"], timeout=datetime.timedelta(seconds=timeout_s))
        if backend == "nccl":
            kwargs["device_id"] = device  # eager NCCL communicator: fail here, not in step one
        try:
            dist.init_process_group(**kwargs)
        except TypeError:  # torch < 2.3 has no device_id
            kwargs.pop("device_id", None)
            dist.init_process_group(**kwargs)
        probe = torch.ones(1, device=device)
        dist.all_reduce(probe)
        if int(probe.item()) != layout["world_size"]:
            raise RuntimeError(f"probe all-reduce gave {probe.item()}, expected {layout['world_size']}")
    except Exception as e:  # every torch failure here means the same thing to the operator
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


# --- model and data ----------------------------------------------------------------------------

def build_model(args, torch):
    nn = torch.nn
    if args.model == "mlp":
        layers = [nn.Linear(args.input_dim, args.hidden), nn.ReLU()]
        for _ in range(args.layers - 1):
            layers += [nn.Linear(args.hidden, args.hidden), nn.ReLU()]
        layers.append(nn.Linear(args.hidden, args.classes))
        return nn.Sequential(*layers)

    class TinyTransformer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(args.input_dim, args.hidden)
            layer = nn.TransformerEncoderLayer(args.hidden, args.heads, 4 * args.hidden,
                                               dropout=0.0, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, args.layers, enable_nested_tensor=False)
            self.head = nn.Linear(args.hidden, args.classes)

        def forward(self, x):
            return self.head(self.encoder(self.proj(x)).mean(dim=1))

    return TinyTransformer()


def synthetic_batches(args, device, rank: int, torch, count: int = 4):
    """A few fixed random batches per rank, labelled by a random linear "teacher" shared by all
    ranks, so the loss can fall without any data being read."""
    gen = torch.Generator().manual_seed(1234)
    teacher = torch.randn(args.input_dim, args.classes, generator=gen)
    gen.manual_seed(1000 + rank)
    shape = (args.batch_size, args.seq_len, args.input_dim) if args.model == "transformer" \
        else (args.batch_size, args.input_dim)
    out = []
    for _ in range(count):
        x = torch.randn(*shape, generator=gen)
        feats = x.mean(dim=1) if args.model == "transformer" else x
        y = (feats @ teacher).argmax(dim=1)
        out.append((x.to(device), y.to(device)))
    return out


def _pct(sorted_vals: list[float], q: float) -> float:
    if not sorted_vals:
        return float("nan")
    i = min(len(sorted_vals) - 1, max(0, math.ceil(q * len(sorted_vals)) - 1))
    return sorted_vals[i]


# --- main --------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default=None, help="nccl, gloo or auto (default: $MLPLAT_BACKEND or auto)")
    p.add_argument("--model", choices=["mlp", "transformer"], default="mlp")
    p.add_argument("--input-dim", type=int, default=1024)
    p.add_argument("--hidden", type=int, default=2048, help="MLP width / transformer d_model")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8, help="transformer only")
    p.add_argument("--seq-len", type=int, default=64, help="transformer only")
    p.add_argument("--classes", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=128, help="per rank")
    p.add_argument("--warmup-steps", type=int, default=5)
    p.add_argument("--steps", type=int, default=30, help="timed steps")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads per process (0: leave)")
    p.add_argument("--rdzv-timeout", type=float, default=float(os.environ.get("MLPLAT_RDZV_TIMEOUT", 300)),
                   help="seconds to wait for every rank (default: $MLPLAT_RDZV_TIMEOUT or 300)")
    p.add_argument("--tag", default="", help="free text copied into every record (e.g. a run id)")
    args = p.parse_args(argv)
    for name in ("input_dim", "hidden", "layers", "heads", "seq_len", "classes", "batch_size", "steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup_steps < 0 or args.rdzv_timeout <= 0:
        p.error("--warmup-steps must be >= 0 and --rdzv-timeout > 0")
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
    watchdog = Watchdog()
    rendezvous(backend, device, layout, args.rdzv_timeout, watchdog, torch)
    try:
        return benchmark(args, layout, backend, device, torch)
    except Exception as e:  # a peer that died, a collective that timed out: say so as a record
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        fail("run", f"rank {layout['rank']} of {layout['world_size']} failed after the rendezvous: "
                    f"{type(e).__name__}: {first}. If a peer died first, its pod's log says why.",
             rank=layout["rank"], world_size=layout["world_size"])


def benchmark(args, layout: dict, backend: str, device, torch) -> int:
    """The measurement itself, once every rank has joined."""
    import torch.distributed as dist

    torch.manual_seed(0)  # the same initial weights everywhere (DDP also broadcasts rank 0's)
    model = build_model(args, torch).to(device)
    params = sum(p.numel() for p in model.parameters())
    ddp = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.SGD(ddp.parameters(), lr=args.lr, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    batches = synthetic_batches(args, device, layout["rank"], torch)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step_s: list[float] = []
    losses: list[float] = []
    t_start = None
    for step in range(args.warmup_steps + args.steps):
        if step == args.warmup_steps:
            sync()
            dist.barrier()
            t_start = time.perf_counter()
        x, y = batches[step % len(batches)]
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(ddp(x), y)
        loss.backward()
        opt.step()
        sync()
        if step >= args.warmup_steps:
            step_s.append(time.perf_counter() - t0)
            losses.append(float(loss.detach().item()))
    elapsed = time.perf_counter() - t_start if t_start is not None else 0.0
    samples = args.batch_size * args.steps
    srt = sorted(step_s)
    common = {
        "world_size": layout["world_size"], "backend": backend, "device": str(device),
        "host": layout["host"], "launcher": layout["launcher"], "model": args.model,
        "params": params, "batch_size": args.batch_size, "warmup_steps": args.warmup_steps,
        "steps": args.steps, "torch_version": torch.__version__, "tag": args.tag,
    }
    if device.type == "cuda":
        common["device_name"] = torch.cuda.get_device_name(device)
        try:  # a tuple in recent torch, an int such as 21803 in old ones
            ver = torch.cuda.nccl.version()
            common["nccl_version"] = ".".join(map(str, ver)) if isinstance(ver, tuple) else str(ver)
        except Exception:
            pass
    else:
        common["threads"] = torch.get_num_threads()
    mine = {
        "rank": layout["rank"], "local_rank": layout["local_rank"], "node_rank": layout["node_rank"],
        **common,
        "elapsed_s": round(elapsed, 6),
        "samples_per_s": round(samples / elapsed, 3) if elapsed > 0 else 0.0,
        "step_time_ms_mean": round(1e3 * sum(step_s) / len(step_s), 4) if step_s else 0.0,
        "step_time_ms_p50": round(1e3 * _pct(srt, 0.5), 4) if srt else 0.0,
        "step_time_ms_p90": round(1e3 * _pct(srt, 0.9), 4) if srt else 0.0,
        "loss_first": round(losses[0], 6) if losses else None,
        "loss_last": round(losses[-1], 6) if losses else None,
    }
    # The order of lines is free; the summary goes out after every rank's figures were gathered.
    stats = gather_floats([elapsed, mine["step_time_ms_mean"], losses[0], losses[-1]], device, torch)
    hosts = gather_strings(layout["host"], device, torch)
    emit("ddp_rank", **mine)
    if layout["rank"] == 0:
        slowest = max(s[0] for s in stats)
        total = layout["world_size"] * samples
        emit("ddp_summary", rank=0, **common,
             nodes=len(set(hosts)),
             global_batch=args.batch_size * layout["world_size"],
             elapsed_s=round(slowest, 6),
             samples_per_s=round(total / slowest, 3) if slowest > 0 else 0.0,
             samples_per_s_per_rank=round(total / slowest / layout["world_size"], 3) if slowest > 0 else 0.0,
             step_time_ms_mean=round(max(s[1] for s in stats), 4),
             loss_first=round(sum(s[2] for s in stats) / len(stats), 6),
             loss_last=round(sum(s[3] for s in stats) / len(stats), 6))
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
