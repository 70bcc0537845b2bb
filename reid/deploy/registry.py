"""Record an export in MLflow: artifacts of the model's training run, a version in the Model Registry.

The exported file and its parity report are logged under ``export/`` of the run that trained the
checkpoint (its ``mlflow_run_id``, as ``reid evaluate`` finds it), so the run holds its parameters,
curves, evaluation and deployable model together. The registered model (``<experiment>-<name>``,
e.g. ``reid-market1501-baseline``) gets a new version whose source is that artifact and whose run is
that run, so the MLflow UI lists the versions of each variant with a link to the run. Nothing is
pickled: the version points at the ONNX/TorchScript file itself (no ``mlflow.pytorch`` flavour).

When the training run is not in this store, the files go to a run of their own (``export-<name>``,
tagged with the missing run id), as the evaluation does.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from reid.errors import TrackingError

ARTIFACT_DIR = "export"


def registered_name(experiment: str, name: str) -> str:
    """``<experiment>-<name>`` with every run of characters other than letters, digits, ``.``, ``_`` and
    ``-`` turned into one ``-``: a checkpoint folder such as ``my run`` must not put a space (or a
    slash) into the Model Registry name, which users type into URLs, ``models:/`` URIs and shells."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{experiment}-{name}").strip("-")
    return slug or "reid-model"


def log_export(tracking: Any, name: str, trained_by: str | None, files: list[Path], model_file: Path,
               report: dict[str, Any], base: Path | None = None) -> tuple[str, str, str]:
    """Log ``files`` and register ``model_file``; returns ``(run id, registered name, version)``."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from reid.tracking import Tracker

    tracker = Tracker(tracking, base=base)
    tracker.check()
    client = MlflowClient(tracking_uri=tracker.uri, registry_uri=tracker.uri)
    run_id = None
    if trained_by:
        try:
            run_id = client.get_run(trained_by).info.run_id
        except MlflowException:
            run_id = None
    try:
        if run_id is None:
            tags = {"reid.command": "export", "variant": name}
            if trained_by:
                tags["reid.trained_by_run"] = trained_by
            with tracker.start(run_name=f"export-{name}", tags=tags):
                run_id = tracker.run_id
        assert run_id is not None
        for path in files:
            client.log_artifact(run_id, str(path), artifact_path=ARTIFACT_DIR)
        for key in ("max_abs_diff", "min_cosine"):
            client.log_metric(run_id, f"export/{key}", float(report[key]))
        client.set_tag(run_id, "export/format", str(report["format"]))
        client.set_tag(run_id, "export/passed", str(bool(report["passed"])).lower())
        reg = registered_name(tracking.experiment, name)
        try:
            client.get_registered_model(reg)
        except MlflowException:
            client.create_registered_model(reg, description=f"reid model {name!r}: exported {report['format']} "
                                                            "inference graph with its preprocessing contract")
        source = f"{client.get_run(run_id).info.artifact_uri}/{ARTIFACT_DIR}/{model_file.name}"
        version = client.create_model_version(reg, source=source, run_id=run_id,
                                              tags={"format": str(report["format"]),
                                                    "min_cosine": f"{report['min_cosine']:.6f}"})
    except MlflowException as exc:
        raise TrackingError(f"could not record the export in MLflow ({tracker.uri}): {exc}") from exc
    return run_id, reg, str(version.version)
