"""Experiment tracking (MLflow); see :mod:`reid.tracking.mlflow_tracker` for the why."""

from reid.tracking.mlflow_tracker import Terminated, Tracker, check_store, run_tags, sigterm_as_interrupt

__all__ = ["Terminated", "Tracker", "check_store", "run_tags", "sigterm_as_interrupt"]
