"""Phase 20, GPU runtime: nouveau blacklisted (initramfs rebuilt), NVIDIA's CUDA and container
toolkit repositories, the driver branch from the params (DKMS), CUDA when asked, containerd
(systemd cgroups, the sandbox image Kubernetes expects) with the NVIDIA runtime as its default
(``nvidia-ctk runtime configure --runtime=containerd --set-as-default``, as a conf.d drop-in), the
legacy Docker path as an option, a bounded reboot when the driver needs it, and ``nvidia-smi`` on
the host and in a container.

Hosts without an NVIDIA GPU (facts) skip the driver steps and say so. Step logic:
:mod:`mlplat.hostprep.nvidia` and :mod:`mlplat.hostprep.containerd`.
"""

from __future__ import annotations

from ..hosts import HostPool
from ..hostprep import containerd as _containerd
from ..hostprep import nvidia as _nvidia
from ..hostprep.runner import facts_step, make_step
from ..report import Table
from . import common

NUMBER, NAME = "20", "gpu_runtime"


def setup(params_file: str = "", mode: str = "plan", run_dir: str = "", confirm: bool = False) -> Table:
    """Load and validate the params; show what this run uses."""
    ctx = common.setup(NUMBER, NAME, params_file, mode, run_dir, confirm)
    ctx.extra["pool"] = HostPool(ctx.params, base_dir=ctx.params_path.parent)
    return common.header_table(ctx)


def _ctx():
    return common.context(NUMBER)


def facts() -> Table:
    """Facts of every host: OS family, kernel, systemd, GPUs (PCI scan and nvidia-smi)."""
    return facts_step(_ctx())


def _step(fn_name: str, label: str, planner):
    return make_step(_ctx, fn_name, label, planner)


nouveau = _step("nouveau", "nouveau | blacklist", _nvidia.plan_nouveau)
repositories = _step("repositories", "nvidia | repositories", _nvidia.plan_repos)
driver = _step("driver", "nvidia | driver", _nvidia.plan_driver)
cuda = _step("cuda", "cuda | toolkit", _nvidia.plan_cuda)
container_toolkit = _step("container_toolkit", "nvidia | container toolkit", _nvidia.plan_toolkit)
containerd_install = _step("containerd_install", "containerd | install", _containerd.plan_install)
containerd_config = _step("containerd_config", "containerd | configure", _containerd.plan_configure)
nvidia_runtime = _step("nvidia_runtime", "containerd | set NVIDIA runtime as default", _containerd.plan_nvidia_runtime)
docker_legacy = _step("docker_legacy", "docker | NVIDIA default runtime (legacy)", _containerd.plan_docker)
reboot = _step("reboot", "host | reboot when needed", _nvidia.plan_reboot)
verify_host = _step("verify_host", "verify | nvidia-smi on the host", _nvidia.plan_verify_host)
verify_container = _step("verify_container", "verify | nvidia-smi in a container", _nvidia.plan_verify_container)

# The steps in the order the notebook runs them.
STEPS = [nouveau, repositories, driver, cuda, container_toolkit, containerd_install, containerd_config,
         nvidia_runtime, docker_legacy, reboot, verify_host, verify_container]


def run_all() -> list[Table]:
    """Every step in order (what the notebook does cell by cell), for scripts and tests."""
    return [facts()] + [step() for step in STEPS]


def finish() -> Table:
    """Close the phase: write the verdict JSON; fails (raises) when a host failed a step."""
    ctx = _ctx()
    pool = ctx.extra.get("pool")
    if pool is not None:
        pool.close()
    if ctx.params.lab is not None:
        ctx.phase.note("lab hosts have no GPUs, no NVIDIA driver and no systemd: driver, reboot and nvidia-smi "
                       "steps are skipped there and proven in plan mode against recorded outputs (tests/hostprep)")
    return common.finish(NUMBER)
