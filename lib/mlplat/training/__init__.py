"""Distributed-training validation (phase 60): workload scripts, job builders, log parsers.

* ``workloads/``: scripts run inside the training containers (``ddp_bench.py``,
  ``allreduce_sweep.py``, ``tf_mwms_smoke.py``), printing one JSON line per measurement.
* :mod:`.jobs`: PyTorchJob, TFJob and TrainJob builders (plain dicts), the workloads ConfigMap,
  cleanup labels, a structural check against the CRDs.
* :mod:`.plan`: the phase's jobs for a cluster's GPU layout, with their pods' names (shared by the
  phase and the lab that serves those pods' logs on KWOK).
* :mod:`.parse`: the JSON lines out of pod logs, DDP and sweep summaries, scaling efficiency,
  nccl-tests tables and NCCL_DEBUG=INFO transport detection.
"""

from .jobs import (crd_problems, label_selector, labels, pytorchjob, tfjob, trainjob, workload_path,
                   workloads_configmap)
from .parse import (DdpRun, NcclDebug, NcclTests, Sweep, extract_records, parse_nccl_debug,
                    parse_nccl_tests, records_from_pods, scaling_efficiency, scaling_table,
                    summarise_ddp, summarise_sweep)

__all__ = ["DdpRun", "NcclDebug", "NcclTests", "Sweep", "crd_problems", "extract_records", "label_selector",
           "labels", "parse_nccl_debug", "parse_nccl_tests", "pytorchjob", "records_from_pods",
           "scaling_efficiency", "scaling_table", "summarise_ddp", "summarise_sweep", "tfjob", "trainjob",
           "workload_path", "workloads_configmap"]
