"""The nccl-tests and NCCL_DEBUG parsers on recorded real outputs only: the shared recorded
logs, read in place (../shared/fixtures/recorded/nccl, or $MLPLAT_SHARED; origins in its SOURCES.md),
not copied into the repository."""

from __future__ import annotations

import pytest

from mlplat.training.parse import parse_nccl_debug, parse_nccl_tests

# file -> rows, avg busbw line, max busbw (either column), first size, last size, ranks listed
TABLES = {
    "all_reduce_perf.2-nodes-k8s-sriov-roce.table.txt": (29, 7.76739, 22.92, 8, 2147483648, None),
    "all_reduce_perf.2x-dgx-a100-k8s-sriov-ib.table.txt": (30, 53.7098, 188.70, 8, 4294967296, None),
    "all_reduce_perf.2x8-h100-gcp-a3mega-tcpxo.full.txt": (31, 70.742, 338.82, 8, 8589934592, 16),
    "all_reduce_perf.4x-dgx-a100-ib.slurm.table.txt": (13, 113.289, 191.56, 1048576, 4294967296, None),
}

# file -> transport, NCCL version, nRanks, nNodes, net connection kinds, intra-node kinds, gdr
DEBUG_LOGS = {
    "nccl-debug-info.nccl-issue-1029.k8s-hpcx-ibext-sharp.excerpt.log":
        ("IB", None, None, None, [], [], False),
    "nccl-debug-info.nccl-issue-1066.ib-roce-mixed-channels.excerpt.log":
        ("IB+RoCE", "2.12.12+cuda11.7", None, None, [], [], False),
    "nccl-debug-info.nccl-issue-1412.2node-16rank-ib.comm-channels.excerpt.log":
        (None, None, 16, 2, [], [], False),
    "nccl-debug-info.nccl-issue-1412.2node-16rank-ib.net-ib-connections.excerpt.log":
        ("verbs", None, None, None, ["NET/IB"], ["P2P/direct pointer"], False),
    "nccl-debug-info.nccl-issue-226.multinode-aws-socket.excerpt.log":
        ("Socket", None, None, None, [], [], False),
    "nccl-debug-info.nccl-issue-302.ib-rank155-of-256.excerpt.log":
        ("IB+RoCE", None, None, None, [], ["P2P/IPC"], False),
    "nccl-debug-info.nccl-issue-952.2node-socket-fallback.excerpt.log":
        ("Socket", None, None, None, ["NET/Socket"], ["P2P/IPC"], False),
    "nccl-debug-info.nccl-issue-983.2node-ib-using-network-ib.excerpt.log":
        ("IB", "2.13.4+cuda11.7", None, None, [], [], False),
    "nccl-debug-info.nccl-tests-issue-252.2node-ibext-gdrdma.excerpt.log":
        ("verbs", None, 8, 2, ["NET/IBext_v8"], ["P2P/CUMEM"], True),
    "nccl-debug-info.nv_peer_memory-issue-56.2node-ib-init.excerpt.log":
        ("IB", "2.4.7+cuda10.0", None, None, [], [], False),
}


@pytest.fixture(scope="module")
def shared_nccl(recorded):
    d = recorded / "nccl"
    if not d.is_dir():
        pytest.skip(f"{d} not found")
    return d


def test_every_shared_nccl_file_has_an_expectation(shared_nccl):
    names = {p.name for p in shared_nccl.iterdir() if p.is_file() and p.name != "SOURCES.md"}
    assert names == set(TABLES) | set(DEBUG_LOGS), "a recorded NCCL file was added or removed: add its expectation"


def _check_table(text: str, name: str):
    rows, avg, peak, first, last, ranks = TABLES[name]
    res = parse_nccl_tests(text)
    assert len(res.rows) == rows
    assert res.avg_busbw_gbps == pytest.approx(avg)
    assert res.max_busbw_gbps == pytest.approx(peak)
    assert res.rows[0]["size_bytes"] == first and res.rows[-1]["size_bytes"] == last
    assert res.out_of_bounds == 0
    assert res.ranks == ranks
    for r in res.rows:
        assert r["dtype"] == "float" and r["op"] == "sum"
        assert r["count"] * 4 == r["size_bytes"]
        # nccl-tests' own definitions hold in its output: algbw = size / time, busbw = algbw * 2(n-1)/n
        if r["time_us"] and r["algbw_gbps"] >= 1:
            assert r["algbw_gbps"] == pytest.approx(r["size_bytes"] / r["time_us"] / 1e3, rel=0.02)
        assert r["busbw_gbps_inplace"] is not None
    return res


@pytest.mark.parametrize("name", sorted(TABLES))
def test_nccl_tests_tables_shared(shared_nccl, name):
    _check_table((shared_nccl / name).read_text(), name)


@pytest.mark.parametrize("name", ["all_reduce_perf.2-nodes-k8s-sriov-roce.table.txt",
                                  "all_reduce_perf.2x-dgx-a100-k8s-sriov-ib.table.txt"])
def test_nccl_tests_older_table_format(shared_nccl, name):
    res = _check_table((shared_nccl / name).read_text(), name)
    # the older table format: an 'error' column instead of root / #wrong
    assert "error" in res.rows[0] and "root" not in res.rows[0]


def test_nccl_tests_full_output_header_and_devices(shared_nccl):
    res = parse_nccl_tests((shared_nccl / "all_reduce_perf.2x8-h100-gcp-a3mega-tcpxo.full.txt").read_text())
    assert res.settings["minBytes"] == 8 and res.settings["maxBytes"] == 8589934592
    assert res.settings["warmup_iters"] == 5 and res.settings["iters"] == 20
    assert res.hosts == ["ztan-mig-235z", "ztan-mig-gq73"]
    assert {d["name"] for d in res.devices} == {"NVIDIA H100 80GB HBM3"}
    assert res.devices[15] == {"rank": 15, "group": 0, "pid": 6740, "host": "ztan-mig-gq73", "device": 7,
                               "bus_id": "0000:8c:00", "name": "NVIDIA H100 80GB HBM3"}
    last = res.rows[-1]
    assert last["root"] == -1 and last["wrong"] == 0 and last["wrong_inplace"] == 0
    # 16 ranks: busbw = algbw * 2 * 15 / 16
    assert last["busbw_gbps"] == pytest.approx(last["algbw_gbps"] * 30 / 16, rel=1e-3)
    assert res.busbw_at(1 << 30) == pytest.approx(297.86)
    assert res.frame().shape == (31, 13)


@pytest.mark.parametrize("name", sorted(DEBUG_LOGS))
def test_nccl_debug_transport(shared_nccl, name):
    transport, version, nranks, nnodes, net, intra, gdr = DEBUG_LOGS[name]
    d = parse_nccl_debug((shared_nccl / name).read_text())
    assert d.transport == transport, d.evidence
    assert d.version == version
    assert (d.nranks, d.nnodes) == (nranks, nnodes)
    assert sorted(d.net_connections) == net
    assert d.intra_node == intra
    assert d.gdr is gdr
    assert d.describe()


def test_nccl_debug_details(shared_nccl):
    def read(n):
        return parse_nccl_debug((shared_nccl / n).read_text())

    roce = read("nccl-debug-info.nccl-issue-1066.ib-roce-mixed-channels.excerpt.log")
    assert [(x["device"], x["link"]) for x in roce.ib_devices] == [("mlx5_0", "IB"), ("mlx5_1", "IB"), ("mlx5_2", "RoCE")]
    assert roce.network == "IB" and roce.plugin == "internal" and roce.bootstrap_ifaces == ["eno1np0"]
    assert roce.warnings == ["nvmlDeviceGetHandleByPciBusId() failed: Not Found"] * 2

    sharp = read("nccl-debug-info.nccl-issue-1029.k8s-hpcx-ibext-sharp.excerpt.log")
    assert sharp.network == "IBext" and sharp.plugin == "/opt/hpcx/nccl_rdma_sharp_plugin/lib/libnccl-net.so"
    assert sharp.ib_devices == [{"device": "mlx5_9", "port": 1, "link": "IB", "features": ["SHARP"]}]
    assert sharp.hosts == ["rdma-gpu-train-worker-0"]  # behind mpirun's 'host: ' prefix

    aws = read("nccl-debug-info.nccl-issue-226.multinode-aws-socket.excerpt.log")
    assert aws.ib_absent and not aws.ib_devices and len(aws.hosts) == 17
    assert aws.socket_ifaces[0] == "ens3:172.31.12.210"
    assert "TCP sockets" in aws.describe()

    # NCCL 2.4 prints 'NET/Socket : Using [0]ib0' as well as the IB HCA: IB wins.
    old = read("nccl-debug-info.nv_peer_memory-issue-56.2node-ib-init.excerpt.log")
    assert old.socket_ifaces == ["ib0:192.168.11.1", "ib0:192.168.11.2"]
    assert old.transport == "IB" and old.ib_disable == "0"
    assert old.hosts == ["master_node", "secondary_node"]

    big = read("nccl-debug-info.nccl-issue-302.ib-rank155-of-256.excerpt.log")
    assert big.hosts == ["crow-ib-new-nccl-256-info-19"]  # behind a '[155] ' prefix
    assert big.connections["P2P/IPC"] == 3  # old 'Ring 00 : ... via P2P/IPC' lines

    ibext = read("nccl-debug-info.nccl-tests-issue-252.2node-ibext-gdrdma.excerpt.log")
    assert ibext.hosts == ["kolyoz1", "kolyoz2"] and "GPUDirect RDMA" in ibext.describe()
