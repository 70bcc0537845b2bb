"""Experiment tracking (MLflow); see :mod:`reid.tracking.mlflow_tracker` for the why."""

from reid.tracking.mlflow_tracker import Tracker, check_store, run_tags

__all__ = ["Tracker", "check_store", "run_tags"]
