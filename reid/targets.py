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

import re
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from reid.config import ConfigError, EvalConfig, read_params

TARGETS_FOLDER = "targets"  # beside data.manifest
INDEX_NAME = "index.json"
TARGET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


class TargetSettings(BaseModel):
    """One entry of ``evaluate.targets``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="names the target in metrics (eval/<name>/mAP), folders and table columns")
    format: str = Field(description="dataset layout, as data.format")
    root: Path = Field(description="dataset folder, anchored like data.root")
    manifest: Path | None = Field(None, description="default: targets/<name>.json beside data.manifest (what dvc.yaml reads)")
    eval: dict[str, Any] = Field(default_factory=dict, description="protocol options (eval.* keys) for this target")

    @field_validator("name")
    @classmethod
    def _slug(cls, v: str) -> str:
        # The name becomes part of MLflow metric keys, folder names and DVC stage paths.
        if not TARGET_NAME.match(v):
            raise ValueError("a target name is letters, digits, '_' and '-' (it names metrics and folders)")
        return v

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: str) -> str:
        from reid.data.datasets import FORMATS

        if v not in FORMATS:
            raise ValueError(f"unknown dataset format; known: {', '.join(FORMATS)}")
        return v

    @field_validator("eval")
    @classmethod
    def _eval_keys(cls, v: dict[str, Any]) -> dict[str, Any]:
        try:
            EvalConfig.model_validate(v)
        except ValidationError as err:
            raise ValueError("; ".join(f"eval.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())) from None
        return v

    @property
    def key(self) -> str:
        """The parameter path of this entry, as errors name it: ``evaluate.targets[<name>]``."""
        return f"evaluate.targets[{self.name}]"

    def manifest_for(self, data_manifest: Path | str) -> Path:
        """This target's manifest: ``manifest`` when set, else ``targets/<name>.json`` beside ``data_manifest``."""
        return Path(self.manifest) if self.manifest is not None else targets_dir(data_manifest) / f"{self.name}.json"

    def eval_overrides(self) -> list[str]:
        """The target's protocol options as ``eval.key=value`` overrides (applied before the user's ``-o``)."""
        import json

        return [f"eval.{key}={json.dumps(value)}" for key, value in self.eval.items()]


def targets_dir(data_manifest: Path | str) -> Path:
    """The folder of the target manifests: ``targets/`` beside the training manifest."""
    return Path(data_manifest).parent / TARGETS_FOLDER


def parse_targets(raw: Any, source: str) -> list[TargetSettings]:
    """Validate the raw ``evaluate.targets`` value; errors name the entry (by name or position) and key."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(f"{source}: evaluate.targets must be a list of {{name, format, root}} entries")
    targets: list[TargetSettings] = []
    for index, entry in enumerate(raw):
        label = entry.get("name") if isinstance(entry, dict) and entry.get("name") else f"#{index}"
        try:
            targets.append(TargetSettings.model_validate(entry))
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'entry'}: {e['msg']}" for e in err.errors())
            raise ConfigError(f"{source}: evaluate.targets[{label}]: {problems}") from None
    names = [t.name for t in targets]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{source}: evaluate.targets names must be unique; repeated: {', '.join(duplicates)}")
    return targets


def read_targets(params: Path | str) -> list[TargetSettings]:
    """The targets declared in a params file (an empty list when there are none)."""
    tree = read_params(Path(params))
    section = tree.get("evaluate") or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{params}: evaluate must be a mapping")
    return parse_targets(section.get("targets"), str(params))


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
