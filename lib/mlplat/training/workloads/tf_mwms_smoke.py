#!/usr/bin/env python3
"""TFJob smoke test: MultiWorkerMirroredStrategy across the TFJob's workers.

Runs inside a TensorFlow container (standard library + tensorflow; nothing downloaded). The
training operator sets ``TF_CONFIG`` in every worker pod::

    {"cluster": {"worker": ["job-worker-0.ns.svc:2222", "job-worker-1.ns.svc:2222"]},
     "task": {"type": "worker", "index": 1}, "environment": "cloud"}

The script checks it (a clear error instead of a hang when it is missing or malformed), builds
the strategy, proves the collective with one all-reduce (every replica contributes 1.0; the sum
must equal the replica count), then trains a linear model on synthetic data for a few steps with
gradients all-reduced across workers. One JSON line per worker on stdout, ``kind`` ``tf_smoke``,
or ``error``. Exit codes: 0 ok, 2 bad setup, 4 wrong all-reduce result.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

SCHEMA = 1
PROG = "tf_mwms_smoke"


def emit(kind: str, **fields) -> None:
    rec = {"schema": SCHEMA, "kind": kind}
    rec.update(fields)
    sys.stdout.write(json.dumps(rec, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def fail(stage: str, message: str, code: int = 2, **fields):
    emit("error", stage=stage, message=message, **fields)
    sys.stderr.write(f"{PROG}: ERROR {stage}: {message}\n")
    sys.stderr.flush()
    sys.exit(code)


def parse_tf_config(raw: str | None) -> dict:
    """The parts of TF_CONFIG this smoke test needs, or ValueError saying what is wrong.

    Returns ``workers`` (chief first, then workers: the order MultiWorkerMirroredStrategy ranks
    them), ``task_type``, ``task_index``, ``rank`` (this task's place in ``workers``),
    ``num_workers`` and ``is_chief``.
    """
    if not raw:
        raise ValueError("TF_CONFIG is not set: run this in a TFJob (the training operator sets it "
                         "per pod) or set it by hand")
    try:
        cfg = json.loads(raw)
    except ValueError as e:
        raise ValueError(f"TF_CONFIG is not JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise ValueError("TF_CONFIG must be a JSON object with 'cluster' and 'task'")
    if "cluster" not in cfg and "sparseCluster" in cfg:
        raise ValueError("TF_CONFIG has a sparseCluster (TFJob enableDynamicWorker: true), which is for "
                         "parameter-server training; MultiWorkerMirroredStrategy needs the full "
                         "cluster: leave enableDynamicWorker off")
    cluster, task = cfg.get("cluster"), cfg.get("task")
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise ValueError("TF_CONFIG needs 'cluster' (job name -> addresses) and 'task' (type, index)")
    if cluster.get("ps"):
        raise ValueError("TF_CONFIG lists 'ps' tasks: MultiWorkerMirroredStrategy takes only chief "
                         "and worker replicas")
    chief = list(cluster.get("chief") or [])
    workers = list(cluster.get("worker") or [])
    if len(chief) > 1:
        raise ValueError(f"TF_CONFIG lists {len(chief)} chiefs; there can be at most one")
    ttype, index = task.get("type"), task.get("index", 0)
    if not isinstance(index, int) or isinstance(index, bool):
        raise ValueError(f"TF_CONFIG task.index must be an integer, not {index!r}")
    if ttype not in ("chief", "worker"):
        raise ValueError(f"TF_CONFIG task.type {ttype!r}: this smoke test runs on chief/worker "
                         f"replicas only (evaluator and ps take no part in all-reduce)")
    members = chief if ttype == "chief" else workers
    if not 0 <= index < len(members):
        raise ValueError(f"TF_CONFIG task {ttype}:{index} is not in the cluster "
                         f"({len(members)} {ttype} address(es))")
    everyone = chief + workers
    rank = index if ttype == "chief" else len(chief) + index
    return {"workers": everyone, "task_type": ttype, "task_index": index, "rank": rank,
            "num_workers": len(everyone), "is_chief": rank == 0}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64, help="per worker")
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--tag", default="")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = parse_tf_config(os.environ.get("TF_CONFIG"))
    except ValueError as e:
        fail("setup", str(e))
    try:
        import tensorflow as tf
    except ImportError as e:
        fail("setup", f"tensorflow is not importable in this container: {e}")

    started = time.perf_counter()
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    replicas = strategy.num_replicas_in_sync

    # The collective itself: every replica adds 1.0.
    ones = strategy.run(lambda: tf.constant(1.0))
    total = float(strategy.reduce(tf.distribute.ReduceOp.SUM, ones, axis=None).numpy())

    with strategy.scope():
        w = tf.Variable(tf.zeros([args.dim, 1]), aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        b = tf.Variable(0.0, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    true_w = tf.random.stateless_normal([args.dim, 1], seed=[1, 2])
    x = tf.random.stateless_normal([args.batch_size, args.dim], seed=[3, 4 + cfg["rank"]])
    y = tf.matmul(x, true_w) + 0.5

    @tf.function
    def train_step():
        def step():
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(tf.matmul(x, w) + b - y))
            grads = tape.gradient(loss, [w, b])
            ctx = tf.distribute.get_replica_context()
            grads = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, grads)
            w.assign_sub(args.lr * grads[0])
            b.assign_sub(args.lr * grads[1])
            return loss
        per_replica = strategy.run(step)
        return strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None)

    losses = [float(train_step().numpy()) for _ in range(args.steps)]
    gpus = tf.config.list_physical_devices("GPU")
    ok = abs(total - replicas) < 1e-6 and replicas == cfg["num_workers"] * max(1, len(gpus))
    emit("tf_smoke", rank=cfg["rank"], world_size=cfg["num_workers"], backend="tf-collective",
         device="gpu" if gpus else "cpu", task_type=cfg["task_type"], task_index=cfg["task_index"],
         replicas_in_sync=replicas, allreduce_sum=total, expected_sum=float(replicas),
         steps=args.steps, loss_first=round(losses[0], 6) if losses else None,
         loss_last=round(losses[-1], 6) if losses else None,
         elapsed_s=round(time.perf_counter() - started, 3), tf_version=tf.__version__, ok=ok, tag=args.tag)
    if not ok:
        fail("allreduce", f"all-reduce of 1.0 over {replicas} replica(s) gave {total}; expected "
                          f"{replicas} with {cfg['num_workers']} worker(s)", code=4)
    return 0


if __name__ == "__main__":
    sys.exit(main())
