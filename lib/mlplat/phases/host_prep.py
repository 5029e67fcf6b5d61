"""Phase 10, host prep: each server made ready for Kubernetes. Static IP (with a rollback guard),
package mirrors (CentOS 7: the vault), base packages, kernel headers matching ``uname -r``, time
sync, swap off, kernel modules and sysctls, SELinux and firewall, disk growth.

Every step probes first and reports per host what it found, what it would change (plan mode, with
diffs) or what it changed and verified (apply mode). The OS family comes from each host's facts.
Steps that need what a host lacks (systemd, a real disk) say ``skipped: <why>``. Step logic:
:mod:`mlplat.hostprep`.
"""

from __future__ import annotations

from ..hosts import HostPool
from ..hostprep import disks as _disks
from ..hostprep import kernel as _kernel
from ..hostprep import mirrors as _mirrors
from ..hostprep import network as _network
from ..hostprep import packages as _packages
from ..hostprep import security as _security
from ..hostprep import swap as _swap
from ..hostprep import timesync as _timesync
from ..hostprep.runner import facts_step, make_step
from ..report import Table
from . import common

NUMBER, NAME = "10", "host_prep"


def setup(params_file: str = "", mode: str = "plan", run_dir: str = "", confirm: bool = False) -> Table:
    """Load and validate the params; show what this run uses."""
    ctx = common.setup(NUMBER, NAME, params_file, mode, run_dir, confirm)
    ctx.extra["pool"] = HostPool(ctx.params, base_dir=ctx.params_path.parent)
    return common.header_table(ctx)


def _ctx():
    return common.context(NUMBER)


def facts() -> Table:
    """Facts of every host: OS family, kernel, systemd, GPUs. Later steps act on them."""
    return facts_step(_ctx())


def _step(fn_name: str, label: str, planner):
    return make_step(_ctx, fn_name, label, planner)


static_ip = _step("static_ip", "network | static IP", _network.plan)
mirrors = _step("mirrors", "mirrors | package sources", _mirrors.plan)
base_packages = _step("base_packages", "packages | base", _packages.plan_base)
kernel_headers = _step("kernel_headers", "packages | kernel headers", _packages.plan_kernel_headers)
time_sync = _step("time_sync", "time | sync", _timesync.plan)
swap = _step("swap", "swap | off", _swap.plan)
kernel_modules = _step("kernel_modules", "kernel | modules", _kernel.plan_modules)
sysctl = _step("sysctl", "kernel | sysctl", _kernel.plan_sysctl)
selinux = _step("selinux", "security | SELinux", _security.plan_selinux)
firewall = _step("firewall", "security | firewall", _security.plan_firewall)
disks = _step("disks", "disks | grow", _disks.plan)

# The steps in the order the notebook runs them.
STEPS = [static_ip, mirrors, base_packages, kernel_headers, time_sync, swap, kernel_modules, sysctl, selinux,
         firewall, disks]


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
        ctx.phase.note("lab hosts share the machine's kernel: modules and sysctls are the machine's; no systemd "
                       "runs there (time sync skipped), and they have no disk of their own to grow")
    return common.finish(NUMBER)
