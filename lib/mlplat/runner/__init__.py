"""Headless runs with papermill, the run archive, resume and run history."""

from .run import RunError, discover, history, history_table, resume, run, select

__all__ = ["RunError", "discover", "history", "history_table", "resume", "run", "select"]
