"""``reid export``: a checkpoint's inference model to ONNX or TorchScript, checked against PyTorch.

The logic lives in :mod:`reid.deploy.export`; this command resolves the options, prints the
preprocessing contract and the parity result, and, when ``tracking.enabled`` in ``--params``, logs the
file and its report to the model's MLflow run and registers a version (:mod:`reid.deploy.registry`).
A failed parity check exits with code 2 after writing its report.

``--precision int8`` writes a statically quantised ONNX model instead (:func:`reid.deploy.export.export_int8`)
and prints what it costs: mAP/rank-1 of int8 and fp32, feature cosine to fp32, img/s of both, and a
plain warning when int8 is slower or loses more than ``--max-map-drop`` mAP points.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer


class Precision(str, Enum):
    """Numeric precision of the exported ONNX graph (``--precision``)."""

    fp32 = "fp32"
    int8 = "int8"


class Consumer(str, Enum):
    """A tracker the export is made for (``--for``)."""

    boxmot = "boxmot"

from reid.commands._common import clean_errors


def command(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint written by `reid train` (e.g. pipeline/models/baseline/last.pt).")],
    output: Annotated[Path, typer.Option("--output", help="File to write (e.g. model.onnx, model.ts).")],
    format: Annotated[str, typer.Option("--format", help="onnx or torchscript.")] = "onnx",
    images: Annotated[
        Optional[list[Path]], typer.Option("--images", help="Images (files, folders, .txt lists) for the parity check; repeatable (default: the manifest's query set).")
    ] = None,
    manifest: Annotated[Optional[Path], typer.Option("--manifest", help="Manifest whose query images the parity check uses (default: the checkpoint's data.manifest).")] = None,
    num_images: Annotated[int, typer.Option("--num-images", min=1, help="Images in the parity check.")] = 32,
    tolerance: Annotated[float, typer.Option("--tolerance", help="Minimum cosine similarity PyTorch vs export, per image.")] = 0.9999,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset.")] = 17,
    report: Annotated[Optional[Path], typer.Option("--report", help="Parity report JSON (default: <output stem>.parity.json beside the output).")] = None,
    params: Annotated[Path, typer.Option("--params", "-p", help="params.yaml whose tracking section says where to log (skipped when absent).")] = Path("params.yaml"),
    name: Annotated[Optional[str], typer.Option("--name", help="Model name for the registry (default: the checkpoint's folder).")] = None,
    track: Annotated[bool, typer.Option("--track/--no-track", help="Log to MLflow and register the model when tracking.enabled.")] = True,
    for_: Annotated[Optional[Consumer], typer.Option(
        "--for", help="Make the file for a tracker: 'boxmot' (BoxMOT's ReID backend, e.g. BoT-SORT/StrongSORT) needs "
                      "--output *.onnx or *.torchscript, writes <output>.metadata.json beside it and, when BoxMOT is "
                      "installed, loads the file with BoxMOT and compares its features. See docs/TRACKING.md.")] = None,
    precision: Annotated[Precision, typer.Option(
        "--precision", help="fp32, or int8: a statically quantised ONNX graph (QDQ, per-channel weights) calibrated on "
                            "training images, reported against fp32 (mAP, feature cosine, img/s). Needs the deploy extra.")] = Precision.fp32,
    calibration_images: Annotated[int, typer.Option("--calibration-images", min=1, help="int8: training images drawn for calibration.")] = 256,
    seed: Annotated[int, typer.Option("--seed", help="int8: seed of the calibration draw.")] = 0,
    int8_activations: Annotated[str, typer.Option(
        "--int8-activations", help="int8: auto (uint8 on CPUs with VNNI, else int8), uint8 (U8S8) or int8 (S8S8).")] = "auto",
    max_map_drop: Annotated[float, typer.Option("--max-map-drop", help="int8: warn when int8 loses more mAP points than this.")] = 1.0,
    int8_eval: Annotated[str, typer.Option(
        "--int8-eval", help="int8: score both graphs on 'test' (the manifest's query/gallery) or 'val' (eval.val_ids held-out identities).")] = "test",
) -> None:
    """Export the inference model (no classifier, dynamic batch) with its preprocessing contract, then check parity."""
    with clean_errors():
        from reid.commands._common import config_from_cli, project_base
        from reid.commands.evaluate import checkpoint_run_id, model_name
        from reid.deploy.export import FORMATS, ParityError, export_checkpoint, export_int8
        from reid.errors import ReidError

        if format not in FORMATS:
            raise ReidError(f"--format {format!r} is not supported; use one of {', '.join(FORMATS)}")
        if precision is Precision.int8 and format != "onnx":
            raise ReidError("--precision int8 writes ONNX (ONNX Runtime's quantisation); use --format onnx")
        if precision is Precision.int8:
            from reid.deploy.quantize import import_quantization

            import_quantization()  # name the extra before anything is loaded
        tracking = None
        not_logged = None  # why nothing goes to MLflow, said in one line (tracking is on by default)
        if not track:
            not_logged = "MLflow: not logged or registered (--no-track)"
        elif not params.is_file():
            not_logged = (f"MLflow: not logged or registered: no parameter file {params} (its tracking section says "
                          "where to log); pass --params PATH, or --no-track to silence this")
        else:
            config = config_from_cli(params, None, None)
            if config.tracking.enabled:
                from reid.tracking import Tracker

                tracking = config.tracking
                Tracker(tracking, base=project_base(params)).check()  # fail before the export, not after
            else:
                not_logged = f"MLflow: not logged or registered: tracking.enabled is false in {params}"
        int8_report = None
        try:
            if precision is Precision.int8:
                typer.echo("int8: exporting fp32, calibrating, quantising, then scoring both graphs (minutes on "
                           "Market-1501 on a CPU)", err=True)
                path, meta, result, int8_report, report_file = export_int8(
                    checkpoint, output, manifest=manifest, images=images, num_images=num_images, tolerance=tolerance,
                    opset=opset, report_path=report, for_consumer=for_.value if for_ else None,
                    calibration_images=calibration_images, seed=seed, activations=int8_activations,
                    max_map_drop=max_map_drop, split=int8_eval)
            else:
                path, meta, result, report_file = export_checkpoint(
                    checkpoint, format, output, images=images, manifest=manifest, num_images=num_images,
                    tolerance=tolerance, opset=opset, report_path=report,
                    for_consumer=for_.value if for_ else None)  # type: ignore[arg-type]
        except ParityError:
            typer.secho("the exported graph does not match PyTorch: see the report", fg=typer.colors.RED, err=True)
            raise
        typer.echo(f"wrote {path} ({format}, {path.stat().st_size / 2**20:.1f} MiB)")
        typer.echo("preprocessing contract (stored in the file's metadata):")
        for key in ("input_name", "input_height", "input_width", "channel_order", "layout", "value_range", "mean",
                    "std", "resize", "resize_antialias", "resize_aspect", "output_name", "embedding_dim", "output_l2_normalized", "eval_distance", "flip",
                    "backbone", "data_hash", "weights_hash"):
            typer.echo(f"  {key}: {meta.get(key, '')}")
        typer.echo(result.summary() + (" (the fp32 graph, before quantisation)" if int8_report else ""))
        if int8_report is not None:
            for line in int8_report.summary().splitlines():
                if line.startswith("WARNING"):
                    typer.secho(line, fg=typer.colors.YELLOW, err=True)
                typer.echo(line)
        typer.echo(f"report: {report_file}")
        logged = [path, report_file]
        if for_ is Consumer.boxmot:
            from reid.deploy.boxmot_compat import PREPROCESS_NAME, sidecar_path

            logged.append(sidecar_path(path))
            typer.echo(f"BoxMOT metadata: {logged[-1]}; use it with e.g. BotSort(reid_weights=Path('{path}'), ...), "
                       f"and reid_preprocess='{PREPROCESS_NAME}' after reid.deploy.boxmot_compat.register_preprocess() "
                       "for features equal to reid's")
        if tracking is not None:
            from reid.deploy.registry import log_export
            from reid.tracking.connection import bounded_http

            model = name or model_name(checkpoint, None) + ("-int8" if int8_report else "")
            with bounded_http():  # a server that died since the check costs seconds, not minutes of retries
                run_id, registered, version = log_export(tracking, model, checkpoint_run_id(checkpoint),
                                                         logged, path, result.to_dict(),
                                                         base=project_base(params),
                                                         contract=meta if format == "onnx" else None)
            typer.echo(f"MLflow: {path.name} and its report logged to run {run_id}; registered as {registered} "
                       f"version {version}")
            if int8_report is not None:
                from reid.deploy.registry import log_int8_metrics

                with bounded_http():
                    log_int8_metrics(tracking, run_id, int8_report.to_dict(), base=project_base(params))
        elif not_logged:
            typer.secho(not_logged, fg=typer.colors.YELLOW, err=True)
