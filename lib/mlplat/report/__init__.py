"""Step results, tables, verdicts, failure hints and secret scrubbing (bottom layer)."""

from .hints import hint_for
from .results import Phase, PhaseFailed, StepResult, Table, failed, results_table, skipped
from .scrub import register_secret, scrub

__all__ = ["Phase", "PhaseFailed", "StepResult", "Table", "failed", "hint_for", "register_secret",
           "results_table", "scrub", "skipped"]
