"""Headless runs with papermill, the run archive, resume and run history."""

from .history_page import write_index
from .run import RunError, discover, history, history_table, resume, run, select

__all__ = ["RunError", "discover", "history", "history_table", "resume", "run", "select", "write_index"]
