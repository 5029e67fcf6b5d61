"""The local lab: SSH hosts, the Kubernetes lab cluster and the binaries it is built from."""

from .control import LabError, build_binaries, down, status_table, up

__all__ = ["LabError", "build_binaries", "down", "status_table", "up"]
