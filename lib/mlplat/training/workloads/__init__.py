"""Workload scripts that run inside training containers (standard library + torch or tensorflow,
no mlplat imports): ``ddp_bench.py``, ``allreduce_sweep.py``, ``tf_mwms_smoke.py``. They are
shipped as package data so :func:`mlplat.training.jobs.workloads_configmap` can mount them."""
