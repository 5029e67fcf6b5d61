"""Parsers for what distributed-training jobs print: the workloads' JSON lines, nccl-tests
tables and NCCL_DEBUG=INFO logs.

* :func:`extract_records` picks the ``{"schema":1,"kind":...}`` lines that ``ddp_bench.py``,
  ``allreduce_sweep.py`` and ``tf_mwms_smoke.py`` print out of a pod log in which NCCL, torch and
  torchrun lines interleave; :func:`records_from_pods` does it for a whole job.
* :func:`summarise_ddp` turns them into a :class:`DdpRun` (total and per-rank samples/s);
  :func:`scaling_efficiency` is ``throughput(N) / (N * throughput(1))``.
* :func:`summarise_sweep` turns ``allreduce`` records into a :class:`Sweep`.
* :func:`parse_nccl_tests` reads an ``all_reduce_perf`` (or any nccl-tests) output.
* :func:`parse_nccl_debug` reads NCCL_DEBUG=INFO lines: NCCL version, ranks, nodes, and the
  transport really used between nodes (InfiniBand, RoCE or sockets).

Pure functions over text; no cluster access. Tables come out as pandas frames on request.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Mapping

SCHEMA = 1
#: Record kinds the workloads write (``error`` by all of them on a failure).
KINDS = frozenset({"ddp_rank", "ddp_summary", "allreduce", "allreduce_summary", "tf_smoke", "error"})

_RECORD_START = re.compile(r'\{\s*"schema"\s*:\s*\d+')
_DECODER = json.JSONDecoder()


# --- the workloads' JSON lines ------------------------------------------------------------------

def _lines(log: str | bytes | Iterable[str]) -> Iterable[str]:
    if isinstance(log, bytes):
        log = log.decode("utf-8", "replace")
    if isinstance(log, str):
        return log.splitlines()
    return log


def extract_records(log: str | bytes | Iterable[str], *, kinds: Iterable[str] | None = None,
                    source: str | None = None) -> list[dict]:
    """The workload records in a log, in order.

    A record is a JSON object that starts with ``"schema"`` (an integer) and has a string
    ``kind``. The workloads print it alone on its line; a prefix before it (kubectl
    ``--timestamps``, torchrun's ``--tee``/``[rank0]:``, mpirun's ``host:``) is tolerated, and so is
    anything after it. Lines that are not records, or records cut short by a crash, are skipped.
    ``source`` (e.g. the pod name) is added to each record as ``"source"``.
    """
    want = set(kinds) if kinds is not None else None
    out = []
    for line in _lines(log):
        m = _RECORD_START.search(line)
        if not m:
            continue
        try:
            obj, _ = _DECODER.raw_decode(line, m.start())
        except ValueError:
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("kind"), str) \
                or not isinstance(obj.get("schema"), int):
            continue
        if want is not None and obj["kind"] not in want:
            continue
        if source is not None:
            obj = dict(obj, source=source)
        out.append(obj)
    return out


def records_from_pods(logs: Mapping[str, str], *, kinds: Iterable[str] | None = None) -> list[dict]:
    """Records from every pod's log, each tagged with ``"source": <pod name>``."""
    out: list[dict] = []
    for pod in sorted(logs):
        out.extend(extract_records(logs[pod], kinds=kinds, source=pod))
    return out


def _frame(rows: list[dict], columns: list[str]):
    import pandas as pd

    return pd.DataFrame(rows, columns=columns)


def _check_schema(records: Iterable[dict]) -> list[str]:
    newer = sorted({r["schema"] for r in records if r.get("schema", SCHEMA) > SCHEMA})
    return [f"records of schema {v} (this parser reads {SCHEMA}): update mlplat" for v in newer]


def _error_problems(errors: list[dict]) -> list[str]:
    return [f"{e.get('source') or 'rank ' + str(e.get('rank', '?'))}: {e.get('stage', 'error')}: "
            f"{e.get('message', '')}" for e in errors]


# --- DDP benchmark -----------------------------------------------------------------------------

RANK_COLUMNS = ["rank", "node_rank", "local_rank", "host", "source", "device", "samples_per_s",
                "step_time_ms_mean", "step_time_ms_p50", "step_time_ms_p90", "loss_first", "loss_last"]


@dataclass
class DdpRun:
    """One run of ``ddp_bench.py``: every rank's record, rank 0's summary, and what is wrong."""

    world_size: int | None
    nodes: int | None
    backend: str | None
    device: str | None
    samples_per_s: float | None          # all ranks together
    per_rank: list[dict] = field(default_factory=list)
    summary: dict | None = None
    errors: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and self.samples_per_s is not None

    @property
    def samples_per_s_per_rank(self) -> float | None:
        if self.samples_per_s is None or not self.world_size:
            return None
        return self.samples_per_s / self.world_size

    def frame(self):
        """The per-rank table (pandas), sorted by rank."""
        rows = sorted(self.per_rank, key=lambda r: r.get("rank", 0))
        return _frame([{c: r.get(c) for c in RANK_COLUMNS} for r in rows], RANK_COLUMNS)


def summarise_ddp(records: Iterable[dict]) -> DdpRun:
    """Summarise the records of one DDP run (all pods' logs of one job).

    The total throughput is rank 0's ``ddp_summary`` (global samples over the slowest rank's
    time); without it (rank 0's log lost) it is computed the same way from the ``ddp_rank``
    records. Missing ranks, duplicate ranks, mixed world sizes and ``error`` records are listed
    in ``problems``.
    """
    records = list(records)
    ranks = [r for r in records if r.get("kind") == "ddp_rank"]
    summaries = [r for r in records if r.get("kind") == "ddp_summary"]
    errors = [r for r in records if r.get("kind") == "error"]
    problems = _check_schema(records) + _error_problems(errors)
    if not ranks and not summaries:
        if not errors:
            problems.append("no ddp_bench records in the logs: did the job run ddp_bench.py, and "
                            "were the pod logs collected before the pods were deleted?")
        return DdpRun(None, None, None, None, None, errors=errors, problems=problems)
    if len(summaries) > 1:
        problems.append(f"{len(summaries)} ddp_summary records: the logs hold more than one run")
    summary = summaries[-1] if summaries else None
    worlds = {r.get("world_size") for r in ranks + summaries}
    if len(worlds) > 1:
        problems.append(f"records of different world sizes {sorted(worlds)}: more than one run")
    world = (summary or ranks[0]).get("world_size")
    seen = Counter(r.get("rank") for r in ranks)
    dup = sorted(k for k, v in seen.items() if v > 1)
    if dup:
        problems.append(f"rank(s) {dup} reported more than once")
    if isinstance(world, int):
        missing = sorted(set(range(world)) - set(seen))
        if missing:
            problems.append(f"no record from rank(s) {missing} of {world}: their pods' logs are "
                            f"missing or they failed before the end")
    if summary is not None:
        total = summary.get("samples_per_s")
        nodes = summary.get("nodes")
    else:
        slowest = max((r.get("elapsed_s") or 0.0) for r in ranks)
        samples = sum(r.get("batch_size", 0) * r.get("steps", 0) for r in ranks)
        total = samples / slowest if slowest > 0 and not problems else None
        nodes = len({r.get("host") for r in ranks})
        problems.append("no ddp_summary from rank 0: total throughput computed from the ranks' records")
    first = summary or ranks[0]
    return DdpRun(world_size=world, nodes=nodes, backend=first.get("backend"), device=first.get("device"),
                  samples_per_s=total, per_rank=ranks, summary=summary, errors=errors, problems=problems)


def scaling_efficiency(throughput: Mapping[int, float], base: int | None = None) -> dict[int, float]:
    """``throughput(N) / (N * throughput(1))`` for each N (nodes, or GPUs: whatever the keys count).

    With no N=1 measurement the smallest N is the baseline: ``thr(N) / ((N / N0) * thr(N0))``.
    """
    if not throughput:
        return {}
    n0 = base if base is not None else min(throughput)
    t0 = throughput[n0]
    if not t0 or t0 <= 0:
        raise ValueError(f"baseline throughput at N={n0} is {t0!r}: cannot scale from it")
    return {n: (t / ((n / n0) * t0)) for n, t in sorted(throughput.items())}


def scaling_table(runs: Mapping[int, DdpRun], base: int | None = None):
    """Throughput against N with the ideal line and efficiency (pandas), from runs keyed by N."""
    thr = {n: r.samples_per_s for n, r in runs.items() if r.samples_per_s}
    eff = scaling_efficiency(thr, base) if thr else {}
    n0 = base if base is not None else (min(thr) if thr else None)
    rows = []
    for n in sorted(runs):
        r = runs[n]
        rows.append({"n": n, "world_size": r.world_size, "nodes": r.nodes, "samples_per_s": r.samples_per_s,
                     "ideal_samples_per_s": (n / n0) * thr[n0] if n0 in thr else None,
                     "scaling_efficiency": eff.get(n), "ok": r.ok})
    return _frame(rows, ["n", "world_size", "nodes", "samples_per_s", "ideal_samples_per_s",
                         "scaling_efficiency", "ok"])


# --- all-reduce sweep --------------------------------------------------------------------------

SWEEP_COLUMNS = ["size_bytes", "count", "time_us", "algbw_gbps", "busbw_gbps", "wrong"]


@dataclass
class Sweep:
    """An all-reduce bandwidth sweep: one row per message size, nccl-tests' definitions."""

    world_size: int | None
    nodes: int | None
    backend: str | None
    device: str | None
    rows: list[dict] = field(default_factory=list)
    summary: dict | None = None
    errors: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and bool(self.rows)

    @property
    def avg_busbw_gbps(self) -> float | None:
        """The mean bus bandwidth over sizes (nccl-tests' "Avg bus bandwidth")."""
        if self.summary and self.summary.get("avg_busbw_gbps") is not None:
            return self.summary["avg_busbw_gbps"]
        return sum(r["busbw_gbps"] for r in self.rows) / len(self.rows) if self.rows else None

    @property
    def max_busbw_gbps(self) -> float | None:
        return max((r["busbw_gbps"] for r in self.rows), default=None)

    def busbw_at(self, size_bytes: int) -> float | None:
        """Bus bandwidth at the largest measured size not above ``size_bytes``."""
        below = [r for r in self.rows if r["size_bytes"] <= size_bytes]
        return max(below, key=lambda r: r["size_bytes"])["busbw_gbps"] if below else None

    def frame(self):
        return _frame([{c: r.get(c) for c in SWEEP_COLUMNS} for r in self.rows], SWEEP_COLUMNS)


def summarise_sweep(records: Iterable[dict]) -> Sweep:
    """Summarise ``allreduce_sweep.py`` records (rank 0's lines; other ranks print none)."""
    records = list(records)
    rows = sorted((r for r in records if r.get("kind") == "allreduce"), key=lambda r: r["size_bytes"])
    summary = next((r for r in reversed(records) if r.get("kind") == "allreduce_summary"), None)
    errors = [r for r in records if r.get("kind") == "error"]
    problems = _check_schema(records) + _error_problems(errors)
    if not rows:
        if not errors:
            problems.append("no allreduce records in the logs: did the job run allreduce_sweep.py?")
        return Sweep(None, None, None, None, errors=errors, problems=problems)
    sizes = Counter(r["size_bytes"] for r in rows)
    if any(v > 1 for v in sizes.values()):
        problems.append("a message size appears more than once: the logs hold more than one sweep")
    wrong = sum(r.get("wrong") or 0 for r in rows)
    if wrong:
        problems.append(f"{wrong} wrong element(s) after all-reduce: the reduction gave wrong results")
    if summary is None:
        problems.append("no allreduce_summary: the sweep did not finish")
    first = summary or rows[0]
    return Sweep(world_size=first.get("world_size"), nodes=first.get("nodes"), backend=first.get("backend"),
                 device=first.get("device"), rows=rows, summary=summary, errors=errors, problems=problems)


# --- nccl-tests --------------------------------------------------------------------------------

@dataclass
class NcclTests:
    """The output of an nccl-tests binary such as ``all_reduce_perf``."""

    rows: list[dict] = field(default_factory=list)
    avg_busbw_gbps: float | None = None
    out_of_bounds: int | None = None
    settings: dict = field(default_factory=dict)
    devices: list[dict] = field(default_factory=list)

    @property
    def ranks(self) -> int | None:
        return len(self.devices) or None

    @property
    def hosts(self) -> list[str]:
        return sorted({d["host"] for d in self.devices})

    @property
    def max_busbw_gbps(self) -> float | None:
        vals = [r[k] for r in self.rows for k in ("busbw_gbps", "busbw_gbps_inplace") if r.get(k) is not None]
        return max(vals, default=None)

    def busbw_at(self, size_bytes: int) -> float | None:
        """Out-of-place bus bandwidth at the largest size not above ``size_bytes``."""
        below = [r for r in self.rows if r["size_bytes"] <= size_bytes]
        return max(below, key=lambda r: r["size_bytes"])["busbw_gbps"] if below else None

    def frame(self):
        cols = ["size_bytes", "count", "dtype", "op", "root", "time_us", "algbw_gbps", "busbw_gbps",
                "wrong", "time_us_inplace", "algbw_gbps_inplace", "busbw_gbps_inplace", "wrong_inplace"]
        return _frame(self.rows, cols)


_DEVICE = re.compile(r"^#\s+Rank\s+(\d+)\s+Group\s+(\d+)\s+Pid\s+(\d+)\s+on\s+(\S+)\s+device\s+(\d+)\s+"
                     r"\[([^\]]*)\]\s*(.*?)\s*$")
_AVG = re.compile(r"^#\s*Avg bus bandwidth\s*:\s*([0-9.eE+-]+)")
_OOB = re.compile(r"^#\s*Out of bounds values\s*:\s*(\d+)")
_SETTING = re.compile(r"(nThread|nGpus|minBytes|maxBytes|warmup iters|iters|agg iters|validation|graph)"
                      r"\s*:?\s+(-?\d+)")
_LEAD = {"size": "size_bytes", "count": "count", "type": "dtype", "redop": "op", "root": "root"}
_GROUP = {"time": "time_us", "algbw": "algbw_gbps", "busbw": "busbw_gbps", "#wrong": "wrong",
          "error": "error", "wrong": "wrong"}


def _num(tok: str):
    if tok in ("N/A", "-", ""):
        return None
    try:
        return int(tok)
    except ValueError:
        try:
            return float(tok)
        except ValueError:
            return tok


def parse_nccl_tests(text: str) -> NcclTests:
    """Parse nccl-tests output: the result table (out-of-place and in-place columns, with or
    without ``root``, ``#wrong`` or the older ``error`` column), the "Avg bus bandwidth" line,
    the "Out of bounds values" line, the settings line and the "Using devices" list.

    Rows use the workloads' field names: ``size_bytes``, ``count``, ``dtype``, ``op``, ``root``,
    ``time_us``, ``algbw_gbps``, ``busbw_gbps``, ``wrong`` (or ``error``) for out-of-place, the
    same with ``_inplace`` for in-place. Bandwidths are GB/s (1e9 bytes/s), as nccl-tests prints.
    """
    res = NcclTests()
    columns: list[str] | None = None
    for raw in text.splitlines():
        line = raw.rstrip()
        s = line.strip()
        if not s:
            continue
        if s.startswith("#"):
            if m := _DEVICE.match(s):
                res.devices.append({"rank": int(m[1]), "group": int(m[2]), "pid": int(m[3]), "host": m[4],
                                    "device": int(m[5]), "bus_id": m[6], "name": m[7]})
            elif m := _AVG.match(s):
                res.avg_busbw_gbps = float(m[1])
            elif m := _OOB.match(s):
                res.out_of_bounds = int(m[1])
            elif "nThread" in s:
                res.settings = {k.replace(" ", "_"): int(v) for k, v in _SETTING.findall(s)}
            else:
                toks = s.lstrip("#").split()
                if toks[:2] == ["size", "count"]:
                    columns = toks
            continue
        if columns is None:
            continue
        toks = s.split()
        if len(toks) != len(columns) or not toks[0].isdigit():
            continue
        row: dict = {}
        lead = [c for c in columns if c in _LEAD]
        for name, tok in zip(columns[:len(lead)], toks[:len(lead)]):
            row[_LEAD[name]] = _num(tok) if name not in ("type", "redop") else tok
        rest_cols, rest = columns[len(lead):], toks[len(lead):]
        half = len(rest_cols) // 2
        for i, (name, tok) in enumerate(zip(rest_cols, rest)):
            key = _GROUP.get(name, name)
            row[key if i < half else f"{key}_inplace"] = _num(tok)
        res.rows.append(row)
    return res


# --- NCCL_DEBUG=INFO ---------------------------------------------------------------------------

@dataclass
class NcclDebug:
    """What NCCL_DEBUG=INFO lines say about a job's communicator and its transports.

    ``transport`` is the inter-node transport: ``"IB"``, ``"RoCE"``, ``"IB+RoCE"`` (HCAs of both
    link layers in use), ``"verbs"`` (the IB verbs transport, link layer not in the log),
    ``"Socket"`` (TCP sockets), or None when the log does not say.
    """

    version: str | None = None
    nranks: int | None = None
    nnodes: int | None = None
    network: str | None = None            # "Using network X": the NET plugin NCCL picked
    plugin: str | None = None             # external net plugin path, "internal" or None
    ib_devices: list[dict] = field(default_factory=list)
    ib_absent: bool = False               # "NET/IB : No device found"
    ib_disable: str | None = None         # NCCL_IB_DISABLE as NCCL echoed it
    socket_ifaces: list[str] = field(default_factory=list)
    bootstrap_ifaces: list[str] = field(default_factory=list)
    connections: Counter = field(default_factory=Counter)   # "NET/IB", "P2P/IPC", "SHM"... -> lines
    gdr: bool = False                     # GPUDirect RDMA seen on a NET connection
    hosts: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    transport: str | None = None
    evidence: list[str] = field(default_factory=list)

    @property
    def net_connections(self) -> dict:
        return {k: v for k, v in self.connections.items() if k.startswith("NET/")}

    @property
    def intra_node(self) -> list[str]:
        return sorted(k for k in self.connections if not k.startswith("NET/"))

    @property
    def link_layers(self) -> list[str]:
        return sorted({d["link"] for d in self.ib_devices})

    def describe(self) -> str:
        """One sentence for a report."""
        if self.transport is None:
            return "the log does not show which transport NCCL used between nodes"
        what = {"IB": "InfiniBand", "RoCE": "RoCE", "IB+RoCE": "IB verbs over InfiniBand and RoCE HCAs",
                "verbs": "IB verbs (InfiniBand or RoCE; the HCA link layer is not in the log)",
                "Socket": "TCP sockets (no RDMA)"}[self.transport]
        devs = ", ".join(f"{d['device']}:{d['port']}/{d['link']}" for d in self.ib_devices)
        extra = f" on {devs}" if devs and self.transport != "Socket" else ""
        if self.transport == "Socket" and self.socket_ifaces:
            extra = f" on {', '.join(self.socket_ifaces)}"
        gdr = ", GPUDirect RDMA" if self.gdr else ""
        return f"NCCL {self.version or '(version not logged)'}: {what}{extra}{gdr}"


_NCCL_VERSION = re.compile(r"NCCL version (\d+\.\d+\.\d+\S*)")
_COMM = re.compile(r"\bcomm 0x[0-9a-f]+ rank (\d+) nranks (\d+)(?: nnodes (\d+))?", re.I)
_USING_NETWORK = re.compile(r"NCCL INFO Using network (\S+)")
_NET_IB_USING = re.compile(r"NCCL INFO NET/IB ?: Using (.*)$")
_IB_DEV = re.compile(r"\[(\d+)\]([\w.-]+):(\d+)/(IB|RoCE)((?:/[A-Za-z]+)*)")
_NET_SOCKET_USING = re.compile(r"NCCL INFO NET/Socket ?: Using (.*)$")
_IFACE = re.compile(r"\[(\d+)\]([^:\s\[]+):([^<\s]+)<")
_BOOTSTRAP = re.compile(r"NCCL INFO Bootstrap ?: Using (?:\[\d+\])?([^:\s]+):")
_PLUGIN_PATH = re.compile(r"NCCL INFO Plugin Path ?: (\S+)")
_CONN = re.compile(r"NCCL INFO (?:Channel|Ring) \d+(?:/\d+)? ?: \d+\[[^\]]*\] -> \d+\[[^\]]*\]"
                   r"(?: \[(?:send|receive)\])? via (.+?)\s*$")
_HOST = re.compile(r"(?:^|\s)([\w.<>-]+):\d+:\d+ \[\d+\] NCCL")
_IB_DISABLE = re.compile(r"NCCL_IB_DISABLE set by environment to (\S+?)\.?$")


def _conn_kind(via: str) -> tuple[str, bool]:
    parts = via.split("/")
    if parts[0] == "NET" and len(parts) > 1:
        return f"NET/{parts[1]}", "GDRDMA" in parts
    if parts[0] == "P2P" and len(parts) > 1:
        return f"P2P/{parts[1]}", False
    return parts[0], False


def parse_nccl_debug(text: str) -> NcclDebug:
    """Parse NCCL_DEBUG=INFO output (any mix of ranks, hosts and prefixes such as mpirun's
    ``host:`` or ``[rank]``). How the transport is decided, strongest evidence first:

    1. connection lines (``Channel 00/0 : 5[5] -> 12[4] [send] via NET/IB/3``): the NET transport
       the rings and trees really use across nodes;
    2. ``Using network IB`` / ``IBext`` / ``Socket``: the net plugin NCCL picked;
    3. ``NET/IB : Using [0]mlx5_0:1/IB`` (IB preferred by NCCL when present), else
       ``NET/Socket : Using [0]eth0`` with ``NET/IB : No device found``.

    For IB verbs, the HCAs' link layers (``/IB`` or ``/RoCE`` after the port) tell InfiniBand from
    RoCE. Note that NCCL prints ``NET/Socket : Using`` for its bootstrap/socket interface even
    when IB carries the data (NCCL 2.4 does), so that line alone never wins over IB lines.
    """
    d = NcclDebug()
    hosts: set[str] = set()
    ib_seen: dict[str, dict] = {}
    for raw in text.splitlines():
        line = raw.rstrip()
        if "NCCL" not in line:
            continue
        if m := _HOST.search(line):
            hosts.add(m[1])
        if m := _NCCL_VERSION.search(line):
            d.version = d.version or m[1]
        if m := _COMM.search(line):
            d.nranks = int(m[2])
            d.nnodes = int(m[3]) if m[3] else d.nnodes
        if " NCCL WARN " in line:
            d.warnings.append(line.split(" NCCL WARN ", 1)[1].strip())
        if m := _USING_NETWORK.search(line):
            d.network = m[1]
        if m := _PLUGIN_PATH.search(line):
            d.plugin = m[1]
        elif "No plugin found" in line and d.plugin is None:
            d.plugin = "internal"
        if m := _IB_DISABLE.search(line):
            d.ib_disable = m[1]
        if "NET/IB : No device found" in line or "NET/IB: No device found" in line:
            d.ib_absent = True
        if m := _NET_IB_USING.search(line):
            for dm in _IB_DEV.finditer(m[1]):
                key = f"{dm[2]}:{dm[3]}"
                ib_seen.setdefault(key, {"device": dm[2], "port": int(dm[3]), "link": dm[4],
                                         "features": [f for f in dm[5].split("/") if f]})
        elif m := _NET_SOCKET_USING.search(line):
            for im in _IFACE.finditer(m[1]):
                if f"{im[2]}:{im[3]}" not in d.socket_ifaces:
                    d.socket_ifaces.append(f"{im[2]}:{im[3]}")
        if m := _BOOTSTRAP.search(line):
            if m[1] not in d.bootstrap_ifaces:
                d.bootstrap_ifaces.append(m[1])
        if m := _CONN.search(line):
            kind, gdr = _conn_kind(m[1])
            d.connections[kind] += 1
            d.gdr = d.gdr or gdr
    d.ib_devices = list(ib_seen.values())
    d.hosts = sorted(hosts)
    d.transport, d.evidence = _decide_transport(d)
    return d


def _decide_transport(d: NcclDebug) -> tuple[str | None, list[str]]:
    def verbs(why: str) -> tuple[str, list[str]]:
        links = set(d.link_layers)
        if links == {"IB"}:
            return "IB", [why, "HCA link layer IB"]
        if links == {"RoCE"}:
            return "RoCE", [why, "HCA link layer RoCE"]
        if links == {"IB", "RoCE"}:
            return "IB+RoCE", [why, "HCAs with IB and with RoCE link layers"]
        return "verbs", [why, "HCA link layer not in the log"]

    net = d.net_connections
    if net:
        kinds = sorted(net)
        if all(k.startswith("NET/Socket") for k in kinds):
            return "Socket", [f"connections via {', '.join(kinds)}"]
        if any(k.startswith("NET/IB") for k in kinds):
            return verbs(f"connections via {', '.join(kinds)}")
        return None, [f"connections via {', '.join(kinds)} (not IB nor sockets)"]
    if d.network:
        if d.network.startswith("IB"):
            return verbs(f"'Using network {d.network}'")
        if d.network == "Socket":
            return "Socket", ["'Using network Socket'"]
        return None, [f"'Using network {d.network}' (not IB nor sockets)"]
    if d.ib_devices and d.ib_disable not in ("1",):
        return verbs("NET/IB lists HCAs")
    if d.socket_ifaces and (d.ib_absent or d.ib_disable == "1"):
        why = "NET/IB : No device found" if d.ib_absent else "NCCL_IB_DISABLE=1"
        return "Socket", [why, f"NET/Socket uses {', '.join(d.socket_ifaces)}"]
    return None, []
