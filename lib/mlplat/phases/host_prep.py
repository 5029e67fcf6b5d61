"""Phase 10, host prep: not built yet (issue 4). In both modes it lists the steps it
will run, each marked `skipped`, so a run says plainly what it did not do."""

from __future__ import annotations

from . import common

NUMBER, NAME = "10", "host_prep"
STEPS: list[tuple[str, str, str]] = [
    ('network | static IP', 'configure the static address with a rollback that keeps SSH reachable', 'issue 4'),
    ('mirrors | package sources', 'write dnf/yum .repo files or apt sources for the chosen mirrors', 'issue 4'),
    ('packages | base and kernel headers', 'install base packages and headers matching uname -r', 'issue 4'),
    ('time | sync', 'enable chrony/timesyncd', 'issue 4'),
    ('swap | off', 'swapoff -a and comment swap out of /etc/fstab', 'issue 4'),
    ('kernel | modules and sysctl', 'load overlay and br_netfilter now and at boot; set the sysctls Kubernetes needs', 'issue 4'),
    ('security | SELinux and firewall', 'set SELinux permissive and open the Kubernetes ports (as params say)', 'issue 4'),
    ('disks | grow', 'grow the named LV/partition and its filesystem; no-op when full size', 'issue 4'),
]


setup, plan, finish = common.skeleton(NUMBER, NAME, STEPS)
