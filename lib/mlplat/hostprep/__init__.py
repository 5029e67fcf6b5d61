"""Host preparation (phase 10) and the GPU container runtime (phase 20): one module per topic, each
step a *planner* (probe, then the files and commands that would converge the host), run by
:func:`base.execute` in plan or apply mode on every host in parallel (:func:`run_step`).

Modules: ``mirrors``, ``packages`` (base packages, kernel headers), ``timesync``, ``swap``, ``kernel``
(modules, sysctl), ``security`` (SELinux, firewall), ``disks``, ``network`` (static IP with a
rollback guard), ``nvidia`` (nouveau, repositories, driver, CUDA, toolkit, reboot, checks),
``containerd`` (install, config, NVIDIA runtime as default, legacy Docker).
"""

from .base import Outcome, Remote, SSHRemote, Target, execute
from .runner import facts_step, run_step

__all__ = ["Outcome", "Remote", "SSHRemote", "Target", "execute", "facts_step", "run_step"]
