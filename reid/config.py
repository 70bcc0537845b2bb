"""Typed parameters for every stage of the toolkit.

All parameters live in one ``params.yaml`` and are validated here, so that a typo fails at once with
the full dotted path of the offending key instead of silently falling back to a default three hours
into a run. Every default is the published strong-baseline ("bag of tricks") recipe, so an empty
params file trains the reference model.

``params.yaml`` holds the base configuration (sections below) plus an optional ``variants`` mapping of
named partial overrides; ``load_config(path, variant="sd_003")`` deep-merges a variant over the base.
This keeps one source of truth for the DVC pipeline, where each KD variant is one stage of a
``foreach`` loop.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A parameter file or override that does not validate; the message names every bad key."""


class _Section(BaseModel):
    """Base for every section: unknown keys are errors, values are re-validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


Stage = Literal["layer1", "layer2", "layer3", "layer4"]
STAGES: tuple[str, ...] = ("layer1", "layer2", "layer3", "layer4")


def known_format(value: str) -> str:
    """``value`` when it is one of the ``data.format`` values (the one list: ``DataConfig.format``), else an error
    listing them; shared by ``data.sources`` entries and ``evaluate.targets`` entries."""
    allowed = get_args(DataConfig.model_fields["format"].annotation)
    if value not in allowed:
        raise ValueError(f"unknown dataset format; one of {', '.join(allowed)}")
    return value


class SourceConfig(_Section):
    """One dataset of a joint (multi-source) training set, ``data.sources``."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$", description="names the source in notes and errors")
    format: str = Field(description="dataset layout, one of the data.format values")
    root: Path = Field(description="dataset folder, anchored like data.root")

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: str) -> str:
        return known_format(v)


class DataConfig(_Section):
    """Where the images come from and how a training batch is drawn and augmented."""

    format: Literal["market1501", "veri776", "folder", "pack", "dukemtmc", "cuhk03", "msmt17", "vehicleid"] = "market1501"
    root: Path = Path("../shared/data/Market-1501-v15.09.15")
    manifest: Path = Path("pipeline/data/manifest.json")
    height: int = Field(256, ge=16, le=1024)
    width: int = Field(128, ge=16, le=1024)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    flip_prob: float = Field(0.5, ge=0.0, le=1.0)
    padding: int = Field(10, ge=0)
    random_erasing_prob: float = Field(0.5, ge=0.0, le=1.0)
    ids_per_batch: int = Field(16, ge=2, description="P: identities per batch")
    instances_per_id: int = Field(4, ge=1, description="K: images per identity per batch (an identity with fewer "
                                  "images is drawn with replacement; `reid prepare` counts them)")
    test_batch_size: int = Field(256, ge=1)
    num_workers: int = Field(4, ge=0)
    input_pipeline: Literal["auto", "gpu", "cpu"] = "auto"
    corrupt_images: Literal["fail", "skip"] = "fail"
    sources: list[SourceConfig] = Field(
        default_factory=list, description="joint training: a list of {name, format, root} read instead of "
        "format/root into one manifest, identities and cameras offset per source")
    allow_id_overlap: bool = Field(
        False, description="folder format: accept the same identity folder in train/ and query/ or gallery/ "
        "(otherwise refused as a train/test leak)")
    cameras: Literal["auto", "none"] = Field(
        "auto", description="none: the data has no camera ids (folder format: no `<camera>_` prefix); evaluation "
        "then counts same-camera matches by itself. VehicleID is always none")
    cuhk03_variant: Literal["detected", "labeled"] = Field(
        "detected", description="cuhk03 format: the CUHK03-NP box source (detected/ or labeled/ folder)")
    msmt17_use_val: bool = Field(
        True, description="msmt17 format: train on list_train.txt + list_val.txt (the official 32,621 images); "
        "false: list_train.txt only (30,248)")
    vehicleid_test_size: Literal[800, 1600, 2400] = Field(
        800, description="vehicleid format: the test list (test_list_800/1600/2400.txt: small/medium/large)")

    @field_validator("std")
    @classmethod
    def _positive_std(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(s <= 0 for s in v):
            raise ValueError("every std must be > 0")
        return v

    @property
    def batch_size(self) -> int:
        """P x K: the training batch size."""
        return self.ids_per_batch * self.instances_per_id


class ModelConfig(_Section):
    """The backbone, its neck and where its starting weights come from."""

    backbone: Literal[
        "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet50_ibn_a", "resnet101_ibn_a"
    ] = "resnet50"
    last_stride: Literal[1, 2] = 1
    neck: Literal["bnneck", "none"] = "bnneck"
    neck_feat: Literal["after", "before"] = "after"
    pretrained: Literal["none", "imagenet", "file"] = "imagenet"
    pretrained_path: Path | None = None
    freeze_backbone_epochs: int = Field(0, ge=0)
    channels_last: bool = True

    @model_validator(mode="after")
    def _file_needs_path(self) -> "ModelConfig":
        if self.pretrained == "file" and self.pretrained_path is None:
            raise ValueError("pretrained='file' needs pretrained_path (a .pth state dict)")
        return self


class LossConfig(_Section):
    """Weights of the named loss terms; a term with weight 0 is not computed."""

    id_weight: float = Field(1.0, ge=0.0)
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)
    triplet_weight: float = Field(1.0, ge=0.0)
    triplet_margin: float = Field(0.3, ge=0.0)
    triplet_soft_margin: bool = False
    center_weight: float = Field(5e-4, ge=0.0, description="the recipe's 5e-4 (softmax_triplet_with_center, the "
                                 "published results); 0 switches center loss off")
    center_lr: float = Field(0.5, gt=0.0, description="lr of the centres' own SGD (no schedule)")


class OptimConfig(_Section):
    """Optimiser and learning-rate schedule."""

    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(3.5e-4, gt=0.0)
    weight_decay: float = Field(5e-4, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    scheduler: Literal["multistep", "cosine"] = "multistep"
    milestones: list[int] = Field(default_factory=lambda: [40, 70], description="1-based epochs from which lr is "
                                  "multiplied by gamma (the 40th epoch already trains at 0.1x)")
    gamma: float = Field(0.1, gt=0.0, le=1.0)
    warmup_epochs: int = Field(10, ge=0, description="epoch e < W trains at factor + (1 - factor) * e / W, epoch W "
                               "is the first at full lr; train.epochs <= W is warned about")
    warmup_factor: float = Field(0.01, gt=0.0, le=1.0)
    min_lr: float = Field(0.0, ge=0.0, description="floor of the cosine schedule")

    @field_validator("milestones")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if any(b <= a for a, b in zip(v, v[1:])) or any(m < 1 for m in v):
            raise ValueError("milestones must be positive and strictly increasing")
        return v


class TrainConfig(_Section):
    """How long to train, on what, and where the results go."""

    epochs: int = Field(120, ge=0)  # 0: no training, the initial model is evaluated (a reference point)
    eval_every: int = Field(10, ge=1, description="evaluate on query/gallery every N epochs (a monitoring curve, "
                            "MLflow eval_epoch/*; never a model selection) and always after the last")
    device: str = "auto"
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    compile: bool = False
    seed: int = 0
    deterministic: bool = False
    max_steps_per_epoch: int | None = Field(None, ge=1, description="cap for smoke runs; None = full epoch")
    output_dir: Path = Path("pipeline/models/baseline")
    log_every_steps: int = Field(20, ge=1)
    sync_bn: bool = Field(True, description="under torchrun (world size > 1): BatchNorm statistics of the global "
                          "batch, as on one big GPU; false: each process normalises its own P/N x K images")
    nproc: int | Literal["auto"] = Field(
        "auto", description="processes, one per GPU: auto = every free GPU this process may use (the most that "
        "split data.ids_per_batch), 1 without a GPU; N = N GPUs, or N CPU processes with device cpu. reid train "
        "starts them itself; under torchrun/SLURM the launcher decides (docs/GPU.md)")
    gpu_busy: Literal["wait", "fail"] = Field(
        "wait", description="when fewer GPUs are free than asked for (another reid process leases them): wait for "
        "them, or fail at once")

    @field_validator("nproc", mode="before")
    @classmethod
    def _nproc(cls, v: Any) -> Any:
        if v == "auto" or (type(v) is int and v >= 1) or (isinstance(v, str) and v.isdigit() and int(v) >= 1):
            return v
        raise ValueError("nproc must be 'auto' or a whole number of processes >= 1")

    @field_validator("amp", mode="before")
    @classmethod
    def _amp_off(cls, v: Any) -> Any:
        # YAML 1.1 reads an unquoted `off` as false, and `dvc exp run -S` rewrites params.yaml without
        # the quotes, so `amp: off` must mean what it says.
        return "off" if v is False else v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v != "auto" and not (v == "cpu" or v == "cuda" or v.startswith("cuda:") or v == "mps"):
            raise ValueError("device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
        return v


class KDConfig(_Section):
    """Knowledge distillation; with every weight at 0 and no teacher, training is the plain baseline."""

    # Self-distillation: a deeper stage teaches shallower ones through projection heads.
    self_distill: bool = False
    teacher_stage: Stage = "layer3"
    student_stages: list[Stage] = Field(default_factory=lambda: ["layer1", "layer2"])
    feature_loss_coefficient: float = Field(0.03, ge=0.0)
    feature_distance: Literal["l2", "mse", "cosine"] = "l2"
    feature_reduction: Literal["sample_mean", "batch_norm"] = Field(
        "sample_mean",
        description="sample_mean: per-sample distance, batch mean, mean over student stages; batch_norm: the "
        "seed's coef * torch.dist over the whole batch (grows with sqrt(B)), summed over stages, l2 only",
    )
    stage_head_id_weight: float = Field(1.0, ge=0.0, description="supervised loss that trains every stage head")
    self_logit_weight: float = Field(0.0, ge=0.0, description="logit KD from the teacher stage's classifier")
    # Offline teacher -> student.
    teacher_checkpoint: Path | None = None
    logit_weight: float = Field(1.0, ge=0.0)
    temperature: float = Field(16.0, gt=0.0)
    symmetric: bool = False
    teacher_feature_weight: float = Field(0.0, ge=0.0)

    @model_validator(mode="after")
    def _stages_ordered(self) -> "KDConfig":
        t = STAGES.index(self.teacher_stage)
        bad = [s for s in self.student_stages if STAGES.index(s) >= t]
        if self.self_distill and bad:
            raise ValueError(f"student_stages {bad} must be shallower than teacher_stage {self.teacher_stage!r}")
        if self.self_distill and not self.student_stages:
            raise ValueError("self_distill needs at least one student stage")
        if self.feature_reduction == "batch_norm" and self.feature_distance != "l2":
            raise ValueError(f"feature_reduction batch_norm (torch.dist over the batch) needs feature_distance l2, "
                             f"got {self.feature_distance!r}; use feature_reduction sample_mean for mse/cosine")
        return self

    @property
    def offline(self) -> bool:
        return self.teacher_checkpoint is not None

    @property
    def mode(self) -> str:
        """``none``, ``self``, ``offline`` or ``self+offline``: the name in MLflow tags and comparison tables."""
        return "+".join(m for m, on in (("self", self.self_distill), ("offline", self.offline)) if on) or "none"


class EvalConfig(_Section):
    """Market-1501 protocol and what is produced after evaluation."""

    flip: bool = False
    normalize: bool = True
    distance: Literal["cosine", "euclidean"] = "cosine"
    ap_variant: Literal["standard", "trapezoidal"] = "standard"
    ranks: list[int] = Field(default_factory=lambda: [1, 5, 10, 20])
    max_rank: int = Field(50, ge=1)
    cross_camera: bool = True
    gallery_draws: int = Field(10, ge=1, description="VehicleID protocol: random one-image-per-id galleries, "
                               "metrics averaged over them")
    gallery_seed: int = Field(0, ge=0, description="VehicleID protocol: seed of the gallery draws (draw 0 of "
                              "seed 0 is the manifest's split)")
    chunk_size: int = Field(512, ge=1, description="queries ranked at once; bounds memory")
    rerank: bool = False
    rerank_k1: int = Field(20, ge=1)
    rerank_k2: int = Field(6, ge=1)
    rerank_lambda: float = Field(0.3, ge=0.0, le=1.0)
    rerank_max_memory_gb: float = Field(8.0, gt=0.0)
    num_ranked_lists: int = Field(8, ge=0)
    ranked_list_size: int = Field(10, ge=1)
    val_ids: int = Field(0, ge=0, description="hold this many training identities out as a validation split and "
                         "keep best.pt = best validation mAP; 0: no split, no best.pt (the last epoch is the model)")


class TrackingConfig(_Section):
    """Where MLflow records runs."""

    enabled: bool = True
    uri: str = "sqlite:///mlflow.db"
    artifact_root: Path = Path("mlruns")
    experiment: str = "reid"
    run_name: str | None = None


class Config(_Section):
    """The whole, resolved configuration of one run."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    kd: KDConfig = Field(default_factory=KDConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    def flat(self) -> dict[str, Any]:
        """Every resolved parameter as ``{"section.key": value}`` (for MLflow and tables)."""
        return flatten(self.model_dump(mode="json"))

    def inactive_keys(self) -> set[str]:
        """The ``section.key`` names of settings that nothing in this run reads (see :func:`inactive_keys`)."""
        return inactive_keys(self)

    def active_flat(self) -> dict[str, Any]:
        """:meth:`flat` with every inactive key's value shown as :data:`INACTIVE`, as MLflow logs it.

        Why: a baseline that logs ``kd.feature_loss_coefficient = 0.03`` looks, in MLflow's compare
        view, like a run distilled with coefficient 0.03. params.yaml (and ``dvc exp show``, which reads
        it) still holds every value as written; only the logged run says which ones had an effect.
        """
        inactive = self.inactive_keys()
        return {k: (INACTIVE if k in inactive else v) for k, v in self.flat().items()}


# ------------------------------------------------------------------------------------------------
# The pipeline's evaluate: section (not part of a run's Config: it says which models the pipeline
# evaluates, where results go and on which other datasets), parsed once, here, for every reader
# (`reid evaluate`, `reid prepare`, `reid compare`).
# ------------------------------------------------------------------------------------------------
TARGETS_FOLDER = "targets"  # beside data.manifest
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
        return known_format(v)

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


class EvaluateSettings(BaseModel):
    """``evaluate:`` in params.yaml: which models the pipeline evaluates, where results go, cross-domain targets."""

    model_config = ConfigDict(extra="forbid")

    output_dir: Path = Field(Path("pipeline/eval"), description="evaluations go to <output_dir>/<model>")
    models: list[str] | None = Field(None, description="baseline then every variant, in order (dvc.yaml's foreach)")
    targets: list[TargetSettings] = Field(default_factory=list, description="other datasets every model is evaluated on")


def evaluate_settings(tree: dict[str, Any], source: str) -> EvaluateSettings:
    """The typed ``evaluate:`` section of a params tree; errors name the key (``evaluate.targets[duke].root``)."""
    section = tree.get("evaluate") or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{source}: evaluate must be a mapping")
    targets = parse_targets(section.get("targets"), source)
    try:
        return EvaluateSettings.model_validate({**{k: v for k, v in section.items() if k != "targets"}, "targets": targets})
    except ValidationError as err:
        problems = "; ".join(f"evaluate.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"{source}: {problems}") from None


def read_evaluate(params: Path | str | None) -> EvaluateSettings:
    """``evaluate:`` of a params file; the defaults when there is no file (``reid evaluate`` without params)."""
    if params is None:
        return EvaluateSettings()
    return evaluate_settings(read_params(Path(params)), str(params))


#: The value MLflow logs for a setting that the run's features do not use (see Config.active_flat).
INACTIVE = "-"


def inactive_keys(config: Config) -> set[str]:
    """The one rule of which settings a run does not use, shared by MLflow logging and ``reid compare``.

    Self-distillation keys count only with ``kd.self_distill``; offline-teacher keys only with a
    ``kd.teacher_checkpoint``; a key shared by both (distance, reduction, temperature) only when a term
    that reads it has a weight above 0; the centre loss's learning rate only with ``loss.center_weight``.
    """
    kd, loss = config.kd, config.loss
    self_on, offline = kd.self_distill, kd.offline
    active = {
        "kd.teacher_stage": self_on, "kd.student_stages": self_on, "kd.feature_loss_coefficient": self_on,
        "kd.stage_head_id_weight": self_on, "kd.self_logit_weight": self_on,
        "kd.logit_weight": offline, "kd.teacher_feature_weight": offline,
        "kd.symmetric": offline and kd.logit_weight > 0,
        "kd.temperature": (self_on and kd.self_logit_weight > 0) or (offline and kd.logit_weight > 0),
        "kd.feature_distance": (self_on and kd.feature_loss_coefficient > 0) or (offline and kd.teacher_feature_weight > 0),
        "kd.feature_reduction": (self_on and kd.feature_loss_coefficient > 0) or (offline and kd.teacher_feature_weight > 0),
        "loss.center_lr": loss.center_weight > 0,
    }
    return {key for key, on in active.items() if not on}


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> ``{"a.b.c": leaf}``; lists stay leaves."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``override`` merged in recursively (override wins; inputs untouched)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid parameters in {source}:"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            parent = e["loc"][:-1]
            allowed = _allowed_keys(parent)
            msg = f"unknown key; allowed here: {', '.join(allowed)}" if allowed else "unknown key"
        else:
            msg = e["msg"]
        got = e.get("input")
        shown = "" if e["type"] == "extra_forbidden" or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  - {path}: {msg}{shown}")
    return "\n".join(lines)


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        model = field.annotation
    return sorted(model.model_fields)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=0.001"`` -> (["optim", "lr"], 0.001); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value, e.g. optim.lr=0.001")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"override {text!r} has an empty key")
    return path, yaml.safe_load(raw)


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted keys (``train.epochs=2``) in a copy of a raw parameter tree."""
    tree = copy.deepcopy(tree)
    for text in overrides:
        path, value = parse_override(text)
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {part!r} is not a section")
        node[path[-1]] = value
    return tree


def read_params(path: Path) -> dict[str, Any]:
    """Read a YAML params file into a dict, with clear errors for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"parameter file {path} does not exist; pass --params PATH or create params.yaml")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(tree, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (data, model, ...), not {type(tree).__name__}")
    return tree


# Top-level keys of params.yaml that are not part of a run's Config (used by the DVC pipeline).
PIPELINE_KEYS = ("variants", "evaluate", "compare", "quickstart")


def resolve_tree(tree: dict[str, Any], variant: str | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Base sections + the named variant + command-line overrides, as a raw tree ready to validate."""
    variants = tree.get("variants") or {}
    base = {k: v for k, v in tree.items() if k not in PIPELINE_KEYS}
    if variant is not None:
        if variant not in variants:
            known = ", ".join(sorted(variants)) or "none defined"
            raise ConfigError(f"unknown variant {variant!r}; variants in params: {known}")
        base = deep_merge(base, variants[variant] or {})
    return apply_overrides(base, overrides or [])


def validate(tree: dict[str, Any], source: str = "parameters") -> Config:
    """Validate a raw tree into a Config, raising ConfigError that lists every bad key by path."""
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def load_config(path: Path | str = "params.yaml", variant: str | None = None, overrides: list[str] | None = None) -> Config:
    """Load, merge and validate parameters; the one entry point every command uses."""
    path = Path(path)
    tree = read_params(path)
    source = str(path) + (f" (variant {variant!r})" if variant else "")
    if overrides:
        # Validate the file alone first, so that a typo in `-o key=value` is blamed on the override.
        validate(resolve_tree(tree, variant), source)
        source = f"the override(s) {', '.join(overrides)} (-o, applied to {source})"
    config = validate(resolve_tree(tree, variant, overrides), source)
    for name, delta in (tree.get("variants") or {}).items():
        # A broken variant should fail now, not when its stage is finally reached.
        if name != variant:
            validate(resolve_tree(tree, name), f"{path} (variant {name!r})")
    return config


def dump_config(config: Config, path: Path) -> None:
    """Write the resolved configuration as YAML (logged with every run for reproducibility)."""
    from reid.atomic import write_text_atomic

    write_text_atomic(path, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
