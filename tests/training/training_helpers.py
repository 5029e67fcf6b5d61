"""Helpers shared by the training tests (a module, not conftest, so tests can import them)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "training"
WORKLOADS = ROOT / "lib" / "mlplat" / "training" / "workloads"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict:
    """This process's environment without any rendezvous variables a CI runner might carry,
    plus ``extra``; one torch thread per process so two ranks share two cores fairly."""
    drop = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
            "GROUP_RANK", "TORCHELASTIC_RUN_ID", "TF_CONFIG", "MLPLAT_BACKEND", "MLPLAT_RDZV_TIMEOUT"}
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("PET_")}
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra)
    return env


def torchrun_cmd(*args: str) -> list[str]:
    """``python -m torch.distributed.run``: the torchrun of the interpreter running the tests."""
    return [sys.executable, "-m", "torch.distributed.run", *args]


def run(cmd: list[str], *, env: dict, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout, cwd=str(ROOT))
