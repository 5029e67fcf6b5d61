"""Phase 60, training validation: not built yet (issue 7). In both modes it lists the steps it
will run, each marked `skipped`, so a run says plainly what it did not do."""

from __future__ import annotations

from . import common

NUMBER, NAME = "60", "training_validation"
STEPS: list[tuple[str, str, str]] = [
    ('gpus | inventory', 'list GPUs per node', 'issue 7'),
    ('nccl | bandwidth sweep', 'all-reduce bus bandwidth across all GPU nodes against the threshold', 'issue 7'),
    ('ddp | scaling', 'PyTorchJob DDP benchmark from 1 node to N; scaling efficiency against the threshold', 'issue 7'),
    ('tfjob | smoke', 'a MultiWorkerMirroredStrategy TFJob', 'issue 7'),
    ('trainjob | smoke', 'a Trainer v2 TrainJob with the torch-distributed runtime', 'issue 7'),
]


setup, plan, finish = common.skeleton(NUMBER, NAME, STEPS)
