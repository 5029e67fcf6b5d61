"""The workloads run for real: torchrun --nproc_per_node=2 on the CPU (gloo), their output parsed
by the parser phase 60 uses; broken rendezvous end with a clear error in bounded time.

Marked ``torch``; skipped with the reason when torch is not importable."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from mlplat.training.parse import extract_records, records_from_pods, summarise_ddp, summarise_sweep
from training_helpers import WORKLOADS, clean_env, free_port, run, torchrun_cmd

pytestmark = [pytest.mark.torch, pytest.mark.usefixtures("torch_ok")]

DDP = str(WORKLOADS / "ddp_bench.py")
SWEEP = str(WORKLOADS / "allreduce_sweep.py")
TINY = ["--hidden", "128", "--layers", "2", "--input-dim", "128", "--batch-size", "16",
        "--warmup-steps", "2", "--steps", "10"]


def _torchrun(*args, timeout=120, **env):
    return run(torchrun_cmd("--nproc_per_node=2", "--master_port", str(free_port()), *args),
               env=clean_env(**env), timeout=timeout)


def test_ddp_bench_torchrun_two_processes(without_numpy):
    out = _torchrun(DDP, *TINY, "--tag", "t1", NCCL_DEBUG="INFO", **without_numpy)
    assert out.returncode == 0, out.stdout[-3000:]
    run_ = summarise_ddp(extract_records(out.stdout))
    assert run_.ok, run_.problems
    assert (run_.world_size, run_.backend, run_.device) == (2, "gloo", "cpu")
    assert sorted(r["rank"] for r in run_.per_rank) == [0, 1]
    assert sorted(r["local_rank"] for r in run_.per_rank) == [0, 1]
    assert all(r["launcher"] == "torchrun" and r["tag"] == "t1" for r in run_.per_rank)
    assert run_.samples_per_s > 0
    assert run_.summary["global_batch"] == 32
    assert "Failed to initialize NumPy" in out.stdout  # numpy really was hidden


def test_ddp_bench_tiny_transformer_single_process():
    out = run([sys.executable, DDP, "--model", "transformer", "--hidden", "32", "--heads", "4", "--layers", "1",
               "--seq-len", "8", "--input-dim", "16", "--batch-size", "8", "--warmup-steps", "1", "--steps", "3"],
              env=clean_env(), timeout=120)
    assert out.returncode == 0, out.stdout[-3000:]
    run_ = summarise_ddp(extract_records(out.stdout))
    assert run_.ok and run_.world_size == 1 and run_.per_rank[0]["launcher"] == "single"
    assert run_.summary["model"] == "transformer"


def test_allreduce_sweep_torchrun_two_processes(without_numpy):
    out = _torchrun(SWEEP, "-b", "8", "-e", "256K", "-w", "1", "-n", "3", **without_numpy)
    assert out.returncode == 0, out.stdout[-3000:]
    sweep = summarise_sweep(extract_records(out.stdout))
    assert sweep.ok, sweep.problems
    assert [r["size_bytes"] for r in sweep.rows] == [8 << i for i in range(16)]
    assert all(r["wrong"] == 0 for r in sweep.rows)
    assert sweep.world_size == 2 and sweep.avg_busbw_gbps > 0
    for r in sweep.rows:
        assert r["busbw_gbps"] == pytest.approx(r["algbw_gbps"], rel=1e-4)  # 2(n-1)/n = 1 for n = 2


def test_pytorchjob_env_two_pods():
    """The two pods of a PyTorchJob (1 Master + 1 Worker, nprocPerNode=1) as the training operator
    sets them up, each running the builder's command: torchrun <script>, reading PET_*."""
    port = free_port()
    procs = {}
    for rank, pod in enumerate(["ddp-master-0", "ddp-worker-0"]):
        env = clean_env(MASTER_ADDR="127.0.0.1", PET_MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                        PET_MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank), PET_NNODES="2",
                        PET_NODE_RANK=str(rank), PET_NPROC_PER_NODE="1", PYTHONUNBUFFERED="0",
                        MLPLAT_RDZV_TIMEOUT="60", PET_RDZV_CONF="timeout=60")
        procs[pod] = subprocess.Popen(torchrun_cmd(DDP, *TINY), env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True)
    logs = {pod: p.communicate(timeout=180)[0] for pod, p in procs.items()}
    assert all(p.returncode == 0 for p in procs.values()), logs
    run_ = summarise_ddp(records_from_pods(logs))
    assert run_.ok, run_.problems
    assert {r["source"]: (r["rank"], r["node_rank"], r["local_rank"]) for r in run_.per_rank} == \
        {"ddp-master-0": (0, 0, 0), "ddp-worker-0": (1, 1, 0)}


@pytest.mark.parametrize("script", [DDP, SWEEP])
def test_world_size_too_large_fails_clearly(script):
    """WORLD_SIZE=2 but only rank 0 ever starts (how a PyTorchJob looks when a pod never runs)."""
    env = clean_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="2")
    started = time.monotonic()
    out = run([sys.executable, script, "--rdzv-timeout", "5"], env=env, timeout=90)
    took = time.monotonic() - started
    assert out.returncode == 2, out.stdout[-3000:]
    assert "ERROR rendezvous" in out.stdout
    assert "1/2 clients joined" in out.stdout
    assert "Check that WORLD_SIZE equals the processes actually started" in out.stdout
    err = [r for r in extract_records(out.stdout) if r["kind"] == "error"]
    assert err and err[0]["stage"] == "rendezvous" and err[0]["world_size"] == 2
    assert took < 60


# Runs a workload script after importing torch and saying so on stdout: the import is the slow part
# of a start (seconds on a busy machine); what follows it reaches the rendezvous at once.
AFTER_TORCH_IMPORT = ("import runpy, sys, torch, torch.distributed; print('test: torch imported', flush=True); "
                      "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")


def test_second_rank_waits_for_a_third_that_never_comes():
    """WORLD_SIZE=3, ranks 0 and 1 start: both end with the rendezvous error, and rank 0 (the
    store) counts rank 1 in. Rank 1 starts first and waits long (its store connects retry until
    rank 0 listens); rank 0 starts once rank 1 has imported torch, so rank 1 is inside the
    rendezvous before rank 0's 10 s wait begins, however slowly a loaded machine imports torch.
    Rank 1 then fails when rank 0, the store, gives up and exits."""
    port = str(free_port())

    def start(rank, timeout, *pre):
        return subprocess.Popen([sys.executable, *pre, DDP, "--rdzv-timeout", str(timeout)],
                                env=clean_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=str(rank),
                                              WORLD_SIZE="3"),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    p1 = start(1, 60, "-c", AFTER_TORCH_IMPORT)
    p0 = None
    lines1: list[str] = []
    imported = threading.Event()

    def read1():
        for line in p1.stdout:
            lines1.append(line)
            if line.startswith("test: torch imported"):
                imported.set()
        imported.set()  # EOF: the process ended

    reader = threading.Thread(target=read1, daemon=True)
    reader.start()
    try:
        assert imported.wait(120) and p1.poll() is None, "rank 1 did not start: " + "".join(lines1)[-3000:]
        p0 = start(0, 10)
        out0 = p0.communicate(timeout=90)[0]
        p1.wait(timeout=90)
        reader.join(timeout=10)
    finally:
        for p in (p0, p1):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    outs = [out0, "".join(lines1)]
    for p, text in zip((p0, p1), outs):
        assert p.returncode == 2, text[-3000:]
        recs = [r for r in extract_records(text) if r["kind"] == "error"]
        assert recs and recs[0]["stage"] == "rendezvous" and "waiting for 3 rank(s)" in recs[0]["message"]
    assert "2/3 clients joined" in outs[0], outs[0][-3000:]


def test_torchrun_missing_node_fails_clearly():
    """A 2-node torchrun (as in a PyTorchJob with nprocPerNode) whose second node never comes:
    torchrun's own rendezvous gives up after PET_RDZV_CONF's timeout, which the builder sets."""
    env = clean_env(PET_NNODES="2", PET_NODE_RANK="0", PET_NPROC_PER_NODE="1", PET_MASTER_ADDR="127.0.0.1",
                    PET_MASTER_PORT=str(free_port()), PET_RDZV_CONF="timeout=5")
    started = time.monotonic()
    out = run(torchrun_cmd(DDP, *TINY), env=env, timeout=90)
    assert out.returncode != 0
    assert "Timed out after" in out.stdout and "1/2 clients joined" in out.stdout
    assert time.monotonic() - started < 60


def test_rank_dying_mid_run_is_reported_by_its_peer():
    """Rank 1 is killed once training has started: rank 0 ends with a 'run' error record."""
    port = str(free_port())
    args = [sys.executable, DDP, "--hidden", "128", "--input-dim", "128", "--layers", "2", "--batch-size", "16",
            "--steps", "1000000", "--rdzv-timeout", "30"]
    env = dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, WORLD_SIZE="2", TORCH_CPP_LOG_LEVEL="INFO")
    p0 = subprocess.Popen(args, env=clean_env(RANK="0", **env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    p1 = subprocess.Popen(args, env=clean_env(RANK="1", **env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    try:
        deadline = time.monotonic() + 120
        for line in p1.stdout:  # torch logs the DDP reducer's set-up when training begins
            if "Reducer" in line or time.monotonic() > deadline:
                break
        p1.kill()
        p1.wait(timeout=30)
        out = p0.communicate(timeout=90)[0]
    finally:
        for p in (p0, p1):
            if p.poll() is None:
                p.kill()
    assert p0.returncode == 2, out[-3000:]
    err = [r for r in extract_records(out) if r["kind"] == "error"]
    assert err and err[0]["stage"] == "run" and "failed after the rendezvous" in err[0]["message"]
    assert not summarise_ddp(extract_records(out)).ok
