"""The JSON-line parsers on the outputs captured from real CPU runs of the workloads
(tests/fixtures/training/*.log, made by capture.sh; see SOURCES.md). No torch needed."""

from __future__ import annotations

import pytest

from mlplat.training.parse import (extract_records, records_from_pods, scaling_efficiency, scaling_table,
                                   summarise_ddp, summarise_sweep)
from training_helpers import FIXTURES


def read(name: str) -> str:
    return (FIXTURES / name).read_text()


def test_ddp_torchrun_log_with_interleaved_lines():
    text = read("ddp_bench.torchrun-2proc.cpu.log")
    # the log mixes torchrun warnings and torch's C++ INFO lines ([rank0]:[I...]) with the records
    assert any(l.startswith("[rank0]:[I") for l in text.splitlines())
    recs = extract_records(text)
    assert [r["kind"] for r in recs].count("ddp_rank") == 2
    assert [r["kind"] for r in recs].count("ddp_summary") == 1
    run = summarise_ddp(recs)
    assert run.ok, run.problems
    assert (run.world_size, run.nodes, run.backend, run.device) == (2, 1, "gloo", "cpu")
    ranks = {r["rank"]: r for r in run.per_rank}
    assert set(ranks) == {0, 1}
    slowest = max(r["elapsed_s"] for r in ranks.values())
    assert run.samples_per_s == pytest.approx(2 * 32 * 60 / slowest, rel=1e-3)
    assert run.samples_per_s_per_rank == pytest.approx(run.samples_per_s / 2)
    for r in ranks.values():
        assert r["launcher"] == "torchrun" and r["steps"] == 60 and r["batch_size"] == 32
        assert r["samples_per_s"] == pytest.approx(32 * 60 / r["elapsed_s"], rel=1e-3)
        assert r["loss_last"] < r["loss_first"]  # it trains
    frame = run.frame()
    assert list(frame["rank"]) == [0, 1] and frame["samples_per_s"].gt(0).all()


def test_sweep_log_with_torchrun_tee_prefixes():
    text = read("allreduce_sweep.torchrun-2proc-tee.cpu.log")
    assert all(l.startswith("[default0]:{") for l in text.splitlines() if '"schema"' in l)
    sweep = summarise_sweep(extract_records(text))
    assert sweep.ok, sweep.problems
    assert [r["size_bytes"] for r in sweep.rows] == [8 << i for i in range(18)]  # 8 B .. 1 MiB
    assert sweep.world_size == 2 and sweep.backend == "gloo"
    for r in sweep.rows:
        assert r["wrong"] == 0 and r["count"] * 4 == r["size_bytes"]
        # nccl-tests' definitions: algbw = bytes / time, busbw = algbw * 2(n-1)/n (= algbw for n=2)
        assert r["algbw_gbps"] == pytest.approx(r["size_bytes"] / (r["time_us"] * 1e-6) / 1e9, rel=1e-3)
        assert r["busbw_gbps"] == pytest.approx(r["algbw_gbps"] * 2 * (2 - 1) / 2, rel=1e-4)
    assert sweep.avg_busbw_gbps == pytest.approx(sum(r["busbw_gbps"] for r in sweep.rows) / 18, rel=1e-4)
    assert sweep.max_busbw_gbps == max(r["busbw_gbps"] for r in sweep.rows)
    assert sweep.busbw_at(1 << 20) == sweep.rows[-1]["busbw_gbps"]
    assert sweep.frame().shape == (18, 6)


def test_pytorchjob_pod_logs_and_scaling():
    """Per-pod logs of the PyTorchJob emulation (1 Master + 1 Worker, and Master alone)."""
    two = {p.name.split(".")[2]: p.read_text() for p in sorted(FIXTURES.glob("pytorchjob.ddp-2n.*.log"))}
    one = {p.name.split(".")[2]: p.read_text() for p in sorted(FIXTURES.glob("pytorchjob.ddp-1n.*.log"))}
    assert set(two) == {"ddp-2n-master-0", "ddp-2n-worker-0"} and set(one) == {"ddp-1n-master-0"}
    run2 = summarise_ddp(records_from_pods(two))
    run1 = summarise_ddp(records_from_pods(one))
    assert run1.ok and run2.ok, run1.problems + run2.problems
    assert (run2.world_size, run2.nodes) == (2, 2)  # each pod had its own hostname
    assert {r["source"] for r in run2.per_rank} == set(two)
    assert {r["host"]: r["node_rank"] for r in run2.per_rank} == {"ddp-2n-master-0": 0, "ddp-2n-worker-0": 1}
    eff = scaling_efficiency({1: run1.samples_per_s, 2: run2.samples_per_s})
    assert eff[1] == 1.0
    assert eff[2] == pytest.approx(run2.samples_per_s / (2 * run1.samples_per_s))
    table = scaling_table({1: run1, 2: run2})
    assert list(table["n"]) == [1, 2]
    assert table["ideal_samples_per_s"].iloc[1] == pytest.approx(2 * run1.samples_per_s)
    assert table["scaling_efficiency"].iloc[1] == pytest.approx(eff[2])


def test_missing_pod_log_is_reported():
    only_master = {"ddp-2n-master-0": read("pytorchjob.ddp-2n.ddp-2n-master-0.log")}
    run = summarise_ddp(records_from_pods(only_master))
    assert not run.ok
    assert any("no record from rank(s) [1] of 2" in p for p in run.problems)
    only_worker = {"ddp-2n-worker-0": read("pytorchjob.ddp-2n.ddp-2n-worker-0.log")}
    run = summarise_ddp(records_from_pods(only_worker))
    assert run.samples_per_s is None and any("rank(s) [0]" in p for p in run.problems)


def test_two_runs_in_one_log_are_flagged():
    text = read("pytorchjob.ddp-1n.ddp-1n-master-0.log") + read("ddp_bench.torchrun-2proc.cpu.log")
    run = summarise_ddp(extract_records(text))
    assert not run.ok and any("more than one run" in p for p in run.problems)


def test_rendezvous_failure_log():
    recs = extract_records(read("ddp_bench.rendezvous-timeout.world-size-2-one-process.log"))
    assert [r["kind"] for r in recs] == ["error"]
    assert recs[0]["stage"] == "rendezvous" and "1/2 clients joined" in recs[0]["message"]
    run = summarise_ddp(recs)
    assert not run.ok and run.samples_per_s is None
    assert "rendezvous" in run.problems[0] and "WORLD_SIZE" in run.problems[0]
    assert not summarise_sweep(recs).ok


def test_tfjob_worker_logs():
    logs = {p.name.split(".")[2]: p.read_text() for p in sorted(FIXTURES.glob("tfjob.tf-smoke.*.log"))}
    recs = records_from_pods(logs, kinds={"tf_smoke"})
    assert len(recs) == 2 and all(r["ok"] for r in recs)
    assert sorted(r["rank"] for r in recs) == [0, 1]
    assert all(r["allreduce_sum"] == r["expected_sum"] == 2.0 for r in recs)
    assert all(r["loss_last"] < r["loss_first"] for r in recs)


def test_no_records_at_all():
    run = summarise_ddp(extract_records("W1128 torch warning only\nNCCL INFO Using network Socket\n"))
    assert not run.ok and "no ddp_bench records" in run.problems[0]
    with pytest.raises(ValueError, match="baseline"):
        scaling_efficiency({1: 0.0, 2: 10.0})
