"""Record an export in MLflow: artifacts of the model's training run, a version in the Model Registry.

The exported file and its parity report are logged under ``export/`` of the run that trained the
checkpoint (its ``mlflow_run_id``, as ``reid evaluate`` finds it), so the run holds its parameters,
curves, evaluation and deployable model together. The registered model (``<experiment>-<name>``,
e.g. ``reid-market1501-baseline``) gets a new version whose run is that run, so the MLflow UI lists
the versions of each variant with a link to the run.

An ONNX export is also logged as an **MLflow model of the run** (``onnx`` flavour, :func:`log_onnx_model`):
the runs table's Models column and the run's Logged models list show it, its ``MLmodel`` carries the
tensor signature (``images`` float32 [batch, 3, H, W] -> ``embedding`` [batch, D]) and the preprocessing
contract as metadata, and the registry version is made from it (source ``models:/<model_id>``), so the
version, the logged model and the run lead to each other. Nothing is pickled: an ONNX graph is data.
A TorchScript export has no MLflow flavour that loads it without pickling (``mlflow.pytorch`` pickles),
so its version points at the file itself, as before.

When the training run is not in this store, the files go to a run of their own (``export-<name>``,
tagged with the missing run id), as the evaluation does.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from pathlib import Path
from typing import Any, Iterator

from reid.errors import TrackingError

ARTIFACT_DIR = "export"


def registered_name(experiment: str, name: str) -> str:
    """``<experiment>-<name>`` with every run of characters other than letters, digits, ``.``, ``_`` and
    ``-`` turned into one ``-``: a checkpoint folder such as ``my run`` must not put a space (or a
    slash) into the Model Registry name, which users type into URLs, ``models:/`` URIs and shells."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{experiment}-{name}").strip("-")
    return slug or "reid-model"


def log_export(tracking: Any, name: str, trained_by: str | None, files: list[Path], model_file: Path,
               report: dict[str, Any], base: Path | None = None,
               contract: dict[str, Any] | None = None) -> tuple[str, str, str]:
    """Log ``files`` and register ``model_file``; returns ``(run id, registered name, version)``.

    ``contract``, the preprocessing contract of an ONNX export (the file's metadata), makes the file an
    MLflow model of the run and the version is registered from that model; without it (TorchScript)
    the version points at the file.
    """
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
        _ensure_registered_model(client, reg, f"reid model {name!r}: exported {report['format']} inference graph "
                                             "with its preprocessing contract")
        tags = {"format": str(report["format"]), "min_cosine": f"{report['min_cosine']:.6f}"}
        if contract is not None:
            import mlflow
            from mlflow.tracking._tracking_service.utils import _use_tracking_uri

            model_id = log_onnx_model(tracker.uri, run_id, model_file, contract, name)
            # register_model also tags the logged model with its versions (mlflow.modelVersions), the
            # link the UI follows from the model to the registry; it reads the process's store.
            with _use_tracking_uri(tracker.uri):
                version = mlflow.register_model(f"models:/{model_id}", reg, tags=tags)
        else:
            source = f"{client.get_run(run_id).info.artifact_uri}/{ARTIFACT_DIR}/{model_file.name}"
            version = client.create_model_version(reg, source=source, run_id=run_id, tags=tags)
    except MlflowException as exc:
        raise TrackingError(f"could not record the export in MLflow ({tracker.uri}): {exc}") from exc
    return run_id, reg, str(version.version)


def onnx_signature(contract: dict[str, Any]) -> Any:
    """The tensor signature of an exported graph: float32 images [batch, 3, H, W] -> embeddings [batch, D]."""
    import numpy as np
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    height, width = int(contract["input_height"]), int(contract["input_width"])
    inputs = Schema([TensorSpec(np.dtype(np.float32), (-1, 3, height, width), str(contract["input_name"]))])
    outputs = Schema([TensorSpec(np.dtype(np.float32), (-1, int(contract["embedding_dim"])),
                                 str(contract["output_name"]))])
    return ModelSignature(inputs=inputs, outputs=outputs)


def log_onnx_model(uri: str, run_id: str, model_file: Path, contract: dict[str, Any], name: str) -> str:
    """Log ``model_file`` as an ``onnx``-flavoured MLflow model of run ``run_id``; returns the model id.

    The contract goes into the MLmodel's ``metadata`` (a consumer reads how to feed the graph without
    our code). The pip requirements are given, not inferred: inference would load the model in a
    subprocess for nothing. ``Model.log`` reads the process's tracking URI and experiment (else it
    files the model under the default experiment "0"), so both are set for the call and restored after.
    """
    import onnx
    import onnxruntime
    from mlflow.models import Model
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    import mlflow.onnx
    from mlflow.tracking import MlflowClient

    graph = onnx.load(str(model_file))
    requirements = [f"onnx=={onnx.__version__}", f"onnxruntime=={onnxruntime.__version__}"]
    experiment_id = MlflowClient(tracking_uri=uri).get_run(run_id).info.experiment_id
    with _use_tracking_uri(uri), _experiment_env(experiment_id):
        info = Model.log(artifact_path=None, name=name, flavor=mlflow.onnx, onnx_model=graph, run_id=run_id,
                         signature=onnx_signature(contract), metadata={"reid_contract": dict(contract)},
                         pip_requirements=requirements, save_as_external_data=False,
                         tags={"reid.model": name})
    return str(info.model_id)


@contextlib.contextmanager
def _experiment_env(experiment_id: str) -> Iterator[None]:
    """``MLFLOW_EXPERIMENT_ID`` set (and ``MLFLOW_EXPERIMENT_NAME`` unset) for the duration of the block."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")}
    os.environ["MLFLOW_EXPERIMENT_ID"] = experiment_id
    os.environ.pop("MLFLOW_EXPERIMENT_NAME", None)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


#: The numbers of an int8 report logged as ``export_int8/<key>`` metrics of the run.
INT8_METRICS = ("fp32_mAP", "int8_mAP", "fp32_rank1", "int8_rank1", "mean_cosine", "min_cosine", "fp32_img_per_s",
                "int8_img_per_s", "speedup", "map_drop_points")


def log_int8_metrics(tracking: Any, run_id: str, report: dict[str, Any], base: Path | None = None) -> None:
    """The int8 report's measured numbers (:data:`INT8_METRICS`) and its warnings, on the run of its export."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from reid.tracking import Tracker

    client = MlflowClient(tracking_uri=Tracker(tracking, base=base).uri)
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(f"export_int8/{k}", float(report[k]), now, 0) for k in INT8_METRICS])
    client.set_tag(run_id, "export_int8/activations", str(report["activations"]))
    client.set_tag(run_id, "export_int8/warnings", " | ".join(report["warnings"]) or "none")


def _ensure_registered_model(client: Any, name: str, description: str) -> None:
    """Create the registered model ``name`` unless it exists. Two exports of one model name at once (the
    jobs of a sweep share their pipeline's names) both find it missing and both create it; the one that
    loses gets RESOURCE_ALREADY_EXISTS, which only means the other one won: both then add their versions."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
        return
    except MlflowException:
        pass
    try:
        client.create_registered_model(name, description=description)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
            raise
