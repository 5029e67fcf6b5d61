"""Fixtures of the lab's SSH hosts (real sshd servers from mlplat.lab.hosts; no mocks).

``lab_hosts`` brings up a session-wide lab of three hosts in its own state directory (under
pytest's tmp folder) and its own free 127.0.x block, so that it never meets the default lab or a
parallel test session, and takes it down at the end. ``lab_pool`` gives each test a fresh
:class:`~mlplat.hosts.HostPool` on it, after making sure every host runs with its pinned key
(a test that stopped a host or changed its key cannot leak into the next one).

Without root, sshd, unshare or overlayfs, tests using them are skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = ["LabHostsInfo", "lab_hosts", "lab_hosts_unavailable", "lab_pool"]

LAB_HOST_COUNT = 3


def lab_hosts_unavailable() -> str | None:
    """Why lab hosts cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "lab hosts need root (mount namespaces, overlay mounts)"
    from mlplat.lab.hosts import SSHD_CANDIDATES

    if not any(os.access(c, os.X_OK) for c in SSHD_CANDIDATES) and shutil.which("sshd") is None:
        return "sshd not installed (apt-get install openssh-server)"
    for tool in ("unshare", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    try:
        if "overlay" not in Path("/proc/filesystems").read_text():
            return "the kernel has no overlayfs"
    except OSError:
        return "cannot read /proc/filesystems"
    return None


@dataclass
class LabHostsInfo:
    """The session's lab: where it lives and what `up` wrote."""

    state_dir: Path
    params_path: Path
    names: list[str] = field(default_factory=list)
    addresses: dict[str, str] = field(default_factory=dict)
    port: int = 22

    def ensure_up(self) -> None:
        """Every host running with its pinned key again (``up`` is idempotent and re-pins keys)."""
        from mlplat.lab import hosts

        hosts.up(self.state_dir, len(self.names))


@pytest.fixture(scope="session")
def lab_hosts(tmp_path_factory) -> LabHostsInfo:
    """A session-wide lab of three SSH hosts, torn down (and checked empty) at the end."""
    reason = lab_hosts_unavailable()
    if reason:
        pytest.skip(reason)
    from mlplat.lab import hosts

    state = tmp_path_factory.mktemp("lab-hosts")
    # A block of its own, varied by pid: parallel sessions on one machine do not collide.
    params = hosts.up(state, LAB_HOST_COUNT, network=hosts.free_network(LAB_HOST_COUNT, start=os.getpid()))
    st = hosts.status(state)
    info = LabHostsInfo(state_dir=state, params_path=params, names=[h["name"] for h in st],
                        addresses={h["name"]: h["address"] for h in st}, port=st[0]["port"])
    try:
        yield info
    finally:
        hosts.down(state)


@pytest.fixture
def lab_pool(lab_hosts):
    """A fresh HostPool on the session's lab, every host up with its pinned key; closed after."""
    from mlplat.hosts import HostPool

    lab_hosts.ensure_up()
    pool = HostPool.from_file(lab_hosts.params_path)
    try:
        yield pool
    finally:
        pool.close()
