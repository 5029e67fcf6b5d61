"""A host made of recorded outputs, for plans of hosts no lab here can run (Rocky 9, CentOS 7, GPUs).

:class:`RecordedHost` answers a planner's commands from a table of (regex, output) pairs, most
of them real outputs read in place from the shared recorded set (``shared/fixtures/recorded``),
and its files from a dict. It
records every command run and every file written, so a test can check a plan's commands and file
contents and that plan mode wrote nothing.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Optional, Union

from mlplat.hostprep.base import Output, Target
from mlplat.hosts.facts import nvidia_gpus, parse_lspci, parse_os_release
from mlplat.params import load_params

import os

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hostprep"
# The shared recorded outputs are read where they lie, not copied (the brief and shared SOURCES.md).
SHARED = Path(os.environ.get("MLPLAT_SHARED") or Path(__file__).resolve().parents[3] / "shared")
RECORDED = SHARED / "fixtures" / "recorded"
CAPTURED = FIXTURES / "captured"

Answer = Union[str, Output, Callable[[str], Output]]


def recorded(rel: str) -> str:
    path = RECORDED / rel
    if not path.exists():
        pytest.skip(f"shared recorded output {rel} not found under {RECORDED} (set MLPLAT_SHARED)")
    return path.read_text()


def captured(rel: str) -> str:
    return (CAPTURED / rel).read_text()


class RecordedHost:
    """A :class:`mlplat.hostprep.base.Remote` answering from recordings."""

    def __init__(self, name: str, files: dict[str, str] | None = None,
                 answers: list[tuple[str, Answer]] | None = None, tools: set[str] | None = None):
        self.name = name
        self.files = dict(files or {})
        self.answers = list(answers or [])
        self.tools = set(tools or ())
        self.ran: list[str] = []
        self.reads: list[str] = []
        self.writes: list[tuple[str, str, int]] = []
        self.unanswered: list[str] = []

    def answer(self, pattern: str, out: Answer) -> "RecordedHost":
        """Answer commands matching `pattern` (a regex, searched) with `out`; later answers win."""
        self.answers.insert(0, (pattern, out))
        return self

    def run(self, command: str, timeout: Optional[float] = None) -> Output:
        self.ran.append(command)
        m = re.match(r"^command -v (\S+) >/dev/null 2>&1$", command)
        if m:
            return Output("", "", 0 if m.group(1) in self.tools else 1)
        m = re.match(r"^\[ -([a-z]) (\S+) \]$", command)
        if m and m.group(2) in self.files:
            return Output("", "", 0)
        for pattern, out in self.answers:
            if re.search(pattern, command):
                if callable(out):
                    return out(command)
                return out if isinstance(out, Output) else Output(out)
        self.unanswered.append(command)
        return Output("", f"(no recording for: {command})", 1)

    def read(self, path: str) -> Optional[str]:
        self.reads.append(path)
        return self.files.get(path)

    def write(self, path: str, content: str, mode: int = 0o644) -> None:
        self.writes.append((path, content, mode))
        self.files[path] = content


def lspci_gpu_facts() -> list[dict]:
    return nvidia_gpus(parse_lspci(recorded("lspci/lspci-nn.a100-sxm4-40gb-and-80gb.torchruntime-15.txt")))


def facts_for(os_release_file: str, kernel: str, *, gpus: bool = True, systemd: bool = True,
              nics: list[dict] | None = None) -> dict:
    """Facts as ``hosts.facts.gather_facts`` returns them, from a recorded os-release; the GPUs from
    the recorded ``lspci -nn`` lines (two A100s), no driver yet (nvidia-smi absent)."""
    osr = parse_os_release(recorded(os_release_file))
    pci = lspci_gpu_facts() if gpus else []
    return {"hostname": "gpu01", "os_id": osr.get("ID"), "os_version": osr.get("VERSION_ID"),
            "os_pretty": osr.get("PRETTY_NAME"), "os_family": osr["family"], "kernel": kernel, "arch": "x86_64",
            "pid1": "systemd" if systemd else "sshd", "has_systemd": systemd, "pci_gpus": pci,
            "nvidia_smi": None, "nvidia_smi_error": None, "gpu_count": len(pci), "nics": nics or [],
            "filesystems": [], "disks": []}


def target(params_path: Path, host_name: str, facts: dict, remote: RecordedHost, state: dict | None = None) -> Target:
    params = load_params(params_path)
    return Target(params.host(host_name), facts, params, remote, state=state if state is not None else {})
