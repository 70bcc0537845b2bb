"""Cross-domain evaluation targets: the ``evaluate.targets`` list of params.yaml and where each lives.

A target is another dataset every model of the pipeline is evaluated on besides its own test split
(train on A, test on B: the only evaluation that shows whether a model generalises to unseen cameras
and datasets). Each entry names the dataset, its layout and folder, and optionally protocol options
(``eval`` keys, e.g. ``cross_camera: false`` for a dataset without usable camera ids)::

    evaluate:
      targets:
      - name: duke
        format: dukemtmc
        root: ../shared/data/DukeMTMC-reID
        eval: {max_rank: 50}

``reid prepare`` reads every target (a missing folder is an error naming the target, before anything
is written), and writes its manifest to ``targets/<name>.json`` beside ``data.manifest`` (in the
pipeline ``pipeline/data/targets/<name>.json``), with ``targets/index.json`` listing what was prepared.
The place is fixed because dvc.yaml tracks that folder as an output of the prepare stage and each
per-(model, target) evaluation stage depends on its file (a DVC matrix cannot look up a path that is
not written in params.yaml); ``manifest`` may name another file for use outside the pipeline.
``reid evaluate CKPT --target NAME`` evaluates on it and records the numbers under the target's own
names (see :mod:`reid.evaluation.naming`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from reid.config import ConfigError, TargetSettings, read_evaluate, targets_dir

INDEX_NAME = "index.json"  # beside the target manifests: which targets were prepared from where


def read_targets(params: Path | str) -> list[TargetSettings]:
    """The targets declared in a params file (an empty list when there are none)."""
    return read_evaluate(params).targets


def find_target(targets: list[TargetSettings], name: str, source: str) -> TargetSettings:
    """The target called ``name``, or an error listing the declared ones."""
    for target in targets:
        if target.name == name:
            return target
    known = ", ".join(t.name for t in targets) or "none declared"
    raise ConfigError(f"{source}: no evaluation target {name!r} in evaluate.targets (declared: {known})")


def read_target_datasets(targets: list[TargetSettings], read: Callable[[str, Path], Any],
                         resolve_root: Callable[[Path], Path]) -> list[tuple[TargetSettings, Any]]:
    """Read every target's dataset with ``read(format, root, evaluation_only=True, source=...)``; a missing
    or malformed one is an error naming the target's keys (``evaluate.targets[<name>].root``), raised
    before anything is written.

    A target is evaluated, never trained on: it needs ``query/`` and ``gallery/`` only (``train/`` may be
    empty or absent), which is how evaluation-only datasets are published.
    """
    from reid.errors import DatasetError

    out = []
    for target in targets:
        root = resolve_root(target.root)
        try:
            out.append((target, read(target.format, root, evaluation_only=True, source=target.key)))
        except DatasetError as exc:
            raise DatasetError(f"evaluation target {target.name!r} ({target.key}, {target.format} "
                               f"at {root}): {exc}") from None
    return out


def select_targets(declared: list[TargetSettings], names: list[str] | None, enabled: bool,
                   source: str) -> list[TargetSettings]:
    """The targets ``reid prepare`` reads: all of them, the ``--target`` ones, or none (``--no-targets``)."""
    if not enabled:
        return []
    if not names:
        return declared
    return [find_target(declared, name, source) for name in dict.fromkeys(names)]


def write_target_manifests(prepared: list[tuple[TargetSettings, Any]], data_manifest: Path | str,
                           declared: list[TargetSettings] | None = None) -> list[tuple[str, Path, Any]]:
    """Write each target's manifest and ``targets/index.json`` (always, so the DVC output exists even with
    no targets); returns ``(name, path, manifest)`` per target.

    Entries of the index for other ``declared`` targets that were not prepared this time are kept, so
    ``reid prepare --target NAME`` refreshes one target without forgetting the others.
    """
    import json

    from reid.atomic import write_text_atomic
    from reid.data.manifest import build_manifest, write_manifest

    written = []
    index = _kept_index_entries(data_manifest, {t.name for t, _ in prepared}, declared)
    for target, splits in prepared:
        manifest = build_manifest(splits)
        path = write_manifest(manifest, target.manifest_for(data_manifest))
        written.append((target.name, path, manifest))
        index.append({"name": target.name, "format": target.format, "root": manifest.root, "manifest": str(path),
                      "content_hash": manifest.content_hash, "statistics": manifest.statistics})
    order = {t.name: i for i, t in enumerate(declared or [t for t, _ in prepared])}
    index.sort(key=lambda entry: order.get(entry["name"], len(order)))
    write_text_atomic(targets_dir(data_manifest) / INDEX_NAME, json.dumps({"targets": index}, indent=2) + "\n")
    return written


def _kept_index_entries(data_manifest: Path | str, prepared: set[str],
                        declared: list[TargetSettings] | None) -> list[dict[str, Any]]:
    """Index entries of still-declared targets not prepared now, whose manifest is still there."""
    import json

    path = targets_dir(data_manifest) / INDEX_NAME
    if declared is None or not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text()).get("targets") or []
    except (OSError, ValueError, AttributeError):
        return []  # unreadable: rewritten from what was prepared now
    names = {t.name for t in declared} - prepared
    return [e for e in entries if isinstance(e, dict) and e.get("name") in names and Path(str(e.get("manifest"))).is_file()]
