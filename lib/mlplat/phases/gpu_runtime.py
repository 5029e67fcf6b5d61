"""Phase 20, gpu runtime: not built yet (issue 4). In both modes it lists the steps it
will run, each marked `skipped`, so a run says plainly what it did not do."""

from __future__ import annotations

from . import common

NUMBER, NAME = "20", "gpu_runtime"
STEPS: list[tuple[str, str, str]] = [
    ('nouveau | blacklist', 'blacklist nouveau and rebuild the initramfs', 'issue 4'),
    ('nvidia | driver', 'install the NVIDIA driver branch from the CUDA repo (DKMS)', 'issue 4'),
    ('cuda | toolkit', 'install the CUDA toolkit when asked', 'issue 4'),
    ('containerd | install and configure', 'install containerd 2.x with SystemdCgroup and the expected sandbox image', 'issue 4'),
    ('containerd | set NVIDIA runtime as default', 'nvidia-ctk runtime configure --runtime=containerd --set-as-default', 'issue 4'),
    ('host | reboot when needed', 'reboot and wait for the host (apply mode only)', 'issue 4'),
    ('verify | nvidia-smi', 'run nvidia-smi on the host and in a container', 'issue 4'),
]


setup, plan, finish = common.skeleton(NUMBER, NAME, STEPS)
