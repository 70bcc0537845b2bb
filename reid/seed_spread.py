"""Which differences between pipeline models exceed the run-to-run (seed) spread.

A single training run is one draw: two runs of the same configuration with different ``train.seed``
differ by some tenths to points of mAP, so a variant that beats the baseline by less than that has
not shown anything. ``reid compare`` therefore reads the spread off the pipeline itself:

* **Seed replicates**: models whose resolved configurations are equal except for ``train.seed``,
  ``train.output_dir`` and ``tracking.run_name`` (what necessarily differs between two runs of one
  configuration). Every model belongs to exactly one replicate group.
* **References**: the group of the ``baseline``; and, for every other backbone, the group of the first
  model (params order) with that backbone and no distillation (``kd.mode == "none"``): a student
  is judged against the same network trained without a teacher, not against a bigger baseline.
  A backbone without such a model falls back to the baseline group, and the table says so.
* Per reference and metric: the mean over its replicates and the **spread = max - min** over them
  (unknown with one run). Every other model's **delta = its value - the reference mean**; it is
  *beyond the seed spread* when ``|delta| > spread``, and undecided when the spread is unknown.

Only the reference's spread is used (a variant run once is compared with the reference's spread; a
variant with replicates of its own shows each of them as a row). Values are the table's percentages.

Group against group (:func:`paired_comparisons`, :func:`group_markdown`): every replicate group's mean
and spread, and each non-reference group paired with its reference seed by seed (variant seed s minus
reference seed s), with the mean, min and max of those deltas and one sentence saying whether the
group's gain exceeds the reference's seed-to-seed range; undecided while either group has one seed.

A self-distillation model with a feature loss is also paired with its **control**
(:func:`control_comparisons`): the model whose active settings are the same with
``kd.feature_loss_coefficient`` 0, so that a gain the stage heads' ID losses bring on their own is not
credited to the feature loss.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Mapping, Sequence

from reid.config import Config, flatten, inactive_keys

#: Metrics compared against the spread, in the table's order.
SPREAD_KEYS: tuple[str, ...] = ("mAP", "rank1")
#: Keys that may differ between replicates of one configuration.
REPLICATE_FREE_KEYS: tuple[tuple[str, str], ...] = (
    ("train", "seed"), ("train", "output_dir"), ("tracking", "run_name"),
)


@dataclass(frozen=True)
class Run:
    """One pipeline model as far as the spread is concerned: its name, resolved config and metrics (percent)."""

    name: str
    config: Config
    metrics: Mapping[str, float | None]

    @property
    def seed(self) -> int:
        return int(self.config.train.seed)


def replicate_signature(config: Config) -> str:
    """The configuration without what differs between replicates; equal signatures = seed replicates."""
    tree = config.model_dump(mode="json")
    for section, key in REPLICATE_FREE_KEYS:
        tree.get(section, {}).pop(key, None)
    return json.dumps(tree, sort_keys=True)


@dataclass(frozen=True)
class Reference:
    """A replicate group that other models are measured against."""

    name: str  # its first model in params order
    runs: tuple[Run, ...]

    def mean(self, key: str) -> float | None:
        values = [r.metrics.get(key) for r in self.runs]
        known = [v for v in values if v is not None]
        return sum(known) / len(known) if known and len(known) == len(values) else None

    def spread(self, key: str) -> float | None:
        """max - min over the replicates; None with fewer than two runs (the spread is unknown)."""
        values = [r.metrics.get(key) for r in self.runs]
        if len(values) < 2 or any(v is None for v in values):
            return None
        return max(values) - min(values)  # type: ignore[type-var,operator]


@dataclass(frozen=True)
class Difference:
    """One model against its reference: deltas to the reference mean and whether they exceed its spread."""

    run: Run
    reference: Reference
    replicate: bool  # the model is one of the reference's own runs
    fallback: bool  # no same-backbone no-KD model: measured against the baseline instead
    delta: Mapping[str, float | None]
    beyond: Mapping[str, bool | None]  # None: spread unknown (one run) or no value


def _references(runs: Sequence[Run]) -> tuple[dict[str, Reference], Reference]:
    """Replicate group of every run (by name) and the baseline's group (the first run's)."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(replicate_signature(run.config), []).append(run)
    by_run = {}
    for members in groups.values():
        ref = Reference(members[0].name, tuple(members))
        for run in members:
            by_run[run.name] = ref
    return by_run, by_run[runs[0].name]


def differences(runs: Sequence[Run]) -> list[Difference]:
    """Every run against its reference (see the module docstring); ``runs[0]`` is the baseline."""
    if not runs:
        return []
    group_of, baseline = _references(runs)
    base_backbone = runs[0].config.model.backbone
    own_reference: dict[str, Reference] = {base_backbone: baseline}
    for run in runs:
        backbone = run.config.model.backbone
        if backbone not in own_reference and run.config.kd.mode == "none":
            own_reference[backbone] = group_of[run.name]
    out = []
    for run in runs:
        ref = own_reference.get(run.config.model.backbone, baseline)
        replicate = group_of[run.name] is ref
        delta: dict[str, float | None] = {}
        beyond: dict[str, bool | None] = {}
        for key in SPREAD_KEYS:
            value, mean, spread = run.metrics.get(key), ref.mean(key), ref.spread(key)
            d = None if value is None or mean is None else value - mean
            delta[key] = d
            beyond[key] = None if d is None or spread is None else abs(d) > spread
        fallback = run.config.model.backbone not in own_reference
        out.append(Difference(run, ref, replicate, fallback, delta, beyond))
    return out


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f}"


def _verdict(diff: Difference) -> str:
    if diff.replicate:
        return "(replicate)"
    verdict = diff.beyond.get("mAP")
    if verdict is None:
        return "spread unknown (one seed)" if diff.reference.spread("mAP") is None else "-"
    return "yes" if verdict else "no"


def spread_markdown(runs: Sequence[Run]) -> str:
    """The references (mean, spread, runs) and every model's deltas, as markdown; '' without runs."""
    diffs = differences(runs)
    if not diffs:
        return ""
    lines = [
        "## Differences and the seed spread",
        "",
        "Seed replicates = models whose configurations differ only in train.seed (and output_dir). "
        "Spread = max - min over a reference's replicates; a delta is to the reference's mean and counts "
        "(`*`, \"beyond seed spread: yes\") only when |delta| > spread. Students are measured against their "
        "own backbone trained without distillation when the pipeline has one.",
        "",
    ]
    seen: list[Reference] = []
    for diff in diffs:
        if any(diff.reference is r for r in seen):
            continue
        seen.append(diff.reference)
        ref = diff.reference
        runs_text = ", ".join(
            f"{r.name} (seed {r.seed}) {r.metrics.get('mAP'):.1f}" if r.metrics.get("mAP") is not None
            else f"{r.name} (seed {r.seed}) -" for r in ref.runs
        )
        parts = []
        for key in SPREAD_KEYS:
            mean, spread = ref.mean(key), ref.spread(key)
            mean_text = "-" if mean is None else f"{mean:.1f}"
            spread_text = "unknown (one seed)" if spread is None else f"{spread:.1f}"
            parts.append(f"{key} mean {mean_text}, spread {spread_text}")
        lines.append(f"- reference **{ref.name}** ({ref.runs[0].config.model.backbone}, {len(ref.runs)} run"
                     f"{'s' if len(ref.runs) != 1 else ''}): {'; '.join(parts)}; mAP per run: {runs_text}")
    lines += ["", "| model | reference | " + " | ".join(f"{k} | Δ {k}" for k in SPREAD_KEYS)
              + " | beyond seed spread (mAP) |",
              "|" + "|".join("---" for _ in range(3 + 2 * len(SPREAD_KEYS))) + "|"]
    for diff in diffs:
        cells = [diff.run.name, diff.reference.name + (" (other backbone)" if diff.fallback else "")]
        for key in SPREAD_KEYS:
            value = diff.run.metrics.get(key)
            mark = "*" if diff.beyond.get(key) and not diff.replicate else ""
            cells += ["-" if value is None else f"{value:.1f}", _signed(diff.delta[key]) + mark]
        cells.append(_verdict(diff))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------
# Group against group: means, spreads and a paired comparison per seed
# ------------------------------------------------------------------------------------------------
#
# A delta to the reference mean (above) judges one run. With several seeds of a variant too, the
# stronger reading pairs the runs: a student of seed s shares its data order and initialisation seed
# with the baseline of seed s, so ``student[s] - baseline[s]`` removes part of the seed-to-seed noise,
# and the per-seed deltas show whether the gain holds for every seed or rests on one.

#: What :func:`PairedComparison.verdict` can say.
EXCEEDS, WITHIN, UNDECIDED = "exceeds", "within", "undecided"
MIN_SEEDS = 2  # a spread (max - min) needs two runs


@dataclass(frozen=True)
class Pair:
    """One seed present in both groups: the variant's value, the reference's value and their difference."""

    seed: int
    value: float
    reference_value: float

    @property
    def delta(self) -> float:
        return self.value - self.reference_value


@dataclass(frozen=True)
class PairedComparison:
    """A replicate group against its reference group on one metric (values in percent)."""

    group: Reference
    reference: Reference
    key: str
    pairs: tuple[Pair, ...]  # in the group's seed order

    @property
    def gain(self) -> float | None:
        """Group mean - reference mean (over all their runs, paired or not)."""
        mean, ref = self.group.mean(self.key), self.reference.mean(self.key)
        return None if mean is None or ref is None else mean - ref

    def delta_stats(self) -> tuple[float, float, float] | None:
        """(mean, min, max) of the per-seed deltas; None without a common seed."""
        deltas = [p.delta for p in self.pairs]
        return (sum(deltas) / len(deltas), min(deltas), max(deltas)) if deltas else None

    def verdict(self) -> str:
        """``exceeds``: |gain| > the reference's seed spread; ``within``: not; ``undecided``: either group
        has fewer than two seeds (or a value is missing), so there is no seed-to-seed range to judge by."""
        spread, gain = self.reference.spread(self.key), self.gain
        if len(self.group.runs) < MIN_SEEDS or len(self.reference.runs) < MIN_SEEDS or spread is None \
                or gain is None or self.group.spread(self.key) is None:
            return UNDECIDED
        return EXCEEDS if abs(gain) > spread else WITHIN

    def sentence(self) -> str:
        """The comparison in words, every number computed from the runs."""
        g, r, key = self.group, self.reference, self.key
        name = "gain" if (self.gain or 0.0) >= 0 else "difference"
        verdict = self.verdict()
        if verdict == UNDECIDED:
            short = [x for x in (g, r) if len(x.runs) < MIN_SEEDS]
            counts = " and ".join(f"`{x.name}` has {len(x.runs)} seed{'s' if len(x.runs) != 1 else ''}" for x in short)
            gain = "" if self.gain is None else f" ({key} {name} {self.gain:+.1f} so far)"
            return (f"`{g.name}` vs `{r.name}`{gain}: undecided, {counts or 'a value is missing'}; "
                    f"a seed-to-seed range needs at least {MIN_SEEDS} seeds in each group.")
        spread = r.spread(key)
        assert spread is not None and self.gain is not None
        stats = self.delta_stats()
        paired = ""
        if stats is not None:
            beyond = sum(abs(p.delta) > spread for p in self.pairs)
            paired = (f"; paired per seed {', '.join(f'{p.delta:+.1f}' for p in self.pairs)} (mean {stats[0]:+.1f}, "
                      f"min {stats[1]:+.1f}, max {stats[2]:+.1f}; {beyond} of {len(self.pairs)} beyond the range)")
        words = "exceeds" if verdict == EXCEEDS else "does not exceed"
        return (f"`{g.name}` ({len(g.runs)} seeds, mean {key} {g.mean(key):.1f}) vs `{r.name}` ({len(r.runs)} seeds, "
                f"mean {r.mean(key):.1f}): the {name} of {self.gain:+.1f} {words} `{r.name}`'s seed-to-seed range "
                f"of {spread:.1f} (max - min){paired}.")


def groups(runs: Sequence[Run]) -> list[Reference]:
    """The replicate groups of ``runs`` (models that differ only in seed), in order of first appearance."""
    if not runs:
        return []
    group_of, _ = _references(runs)
    out: list[Reference] = []
    for run in runs:
        if not any(group_of[run.name] is g for g in out):
            out.append(group_of[run.name])
    return out


def paired_comparisons(runs: Sequence[Run], key: str = "mAP") -> list[PairedComparison]:
    """Every replicate group that is not a reference, against its reference (the rule of :func:`differences`),
    paired by ``train.seed``. A seed the reference lacks has no pair (the group mean still counts it)."""
    diffs = differences(runs)
    out = []
    for group in groups(runs):
        ref = next(d.reference for d in diffs if d.run.name == group.runs[0].name)
        if ref.name == group.name:  # a group is named by its first model: this one is a reference
            continue
        out.append(_paired(group, ref, key))
    return out


def _paired(group: Reference, ref: Reference, key: str) -> PairedComparison:
    """``group`` against ``ref``, its runs paired by ``train.seed`` (the first reference run of a seed, if
    one repeats; a seed the reference lacks has no pair)."""
    by_seed: dict[int, float] = {}
    for run in ref.runs:
        value = run.metrics.get(key)
        if value is not None:
            by_seed.setdefault(run.seed, value)
    pairs = tuple(Pair(run.seed, float(run.metrics[key]), by_seed[run.seed]) for run in group.runs
                  if run.metrics.get(key) is not None and run.seed in by_seed)
    return PairedComparison(group, ref, key, pairs)


# ------------------------------------------------------------------------------------------------
# Self-distillation against its control: the same run with the feature loss off
# ------------------------------------------------------------------------------------------------
#
# Self-distillation adds two things to the baseline: ID losses on the stage heads (deep supervision)
# and the feature loss that ``kd.feature_loss_coefficient`` weighs. A gain over the baseline may come
# from the first alone, so a self-distillation model is also judged against its control, the model
# whose configuration is the same with the coefficient at 0 (``ds_ctrl`` in the pipeline's params).


def active_signature(config: Config) -> str:
    """The configuration without what differs between replicates and without the settings the run does
    not use (:func:`reid.config.inactive_keys`): two configurations with equal active signatures train
    alike, e.g. a feature-loss reduction does not matter once its coefficient is 0."""
    flat = flatten(config.model_dump(mode="json"))
    drop = inactive_keys(config) | {f"{section}.{key}" for section, key in REPLICATE_FREE_KEYS}
    return json.dumps({k: v for k, v in flat.items() if k not in drop}, sort_keys=True)


def control_signature(config: Config) -> str | None:
    """The active signature of ``config``'s control (the same self-distillation, feature loss off);
    None where the run has no feature loss to switch off."""
    kd = config.kd
    if not kd.self_distill or kd.feature_loss_coefficient <= 0:
        return None
    control = config.model_copy(update={"kd": kd.model_copy(update={"feature_loss_coefficient": 0.0})})
    return active_signature(control)


def control_comparisons(runs: Sequence[Run], key: str = "mAP") -> list[PairedComparison]:
    """Every self-distillation group with a feature loss against its control group, paired by seed; a
    group whose control was not run has no comparison."""
    all_groups = groups(runs)
    by_signature: dict[str, Reference] = {}
    for group in all_groups:
        by_signature.setdefault(active_signature(group.runs[0].config), group)
    out = []
    for group in all_groups:
        wanted = control_signature(group.runs[0].config)
        control = by_signature.get(wanted) if wanted is not None else None
        if control is not None and control is not group:
            out.append(_paired(group, control, key))
    return out


#: The line above the control sentences (``group_markdown`` and the CPU-track record's README block).
CONTROL_INTRO = ("The feature loss against its control (the same self-distillation with "
                 "`kd.feature_loss_coefficient` 0, so only the stage heads' ID losses): a gain over the baseline "
                 "that the control has too is deep supervision's, not the feature loss's.")


def _cell(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.1f}" if signed else f"{value:.1f}"


def group_markdown(runs: Sequence[Run], key: str = "mAP") -> str:
    """Each group's mean and spread over its seeds, the paired comparison per seed and the verdicts in
    words, as markdown; '' without runs."""
    all_groups = groups(runs)
    if not all_groups:
        return ""
    comparisons = {c.group.name: c for c in paired_comparisons(runs, key)}
    lines = [f"## Seed groups and paired comparison ({key})", "",
             "A group = the models that differ only in train.seed; spread = max - min over its seeds (one seed: "
             "unknown). Paired: the variant of seed s minus its reference of seed s.", "",
             "| group | reference | seeds | per seed | mean | spread | gain (means) | paired deltas | paired mean | "
             "paired min / max | verdict |", "|" + "|".join("---" for _ in range(11)) + "|"]
    for group in all_groups:
        comp = comparisons.get(group.name)
        per_seed = ", ".join(f"{r.seed}: {_cell(r.metrics.get(key))}" for r in group.runs)
        cells = [group.name, comp.reference.name if comp else "(reference)",
                 str(len(group.runs)), per_seed, _cell(group.mean(key)),
                 "unknown" if group.spread(key) is None else _cell(group.spread(key))]
        if comp is None:
            cells += ["-", "-", "-", "-", "-"]
        else:
            stats = comp.delta_stats()
            cells += [_cell(comp.gain, True),
                      ", ".join(f"{p.seed}: {p.delta:+.1f}" for p in comp.pairs) or "no common seed",
                      "-" if stats is None else f"{stats[0]:+.1f}",
                      "-" if stats is None else f"{stats[1]:+.1f} / {stats[2]:+.1f}", comp.verdict()]
        lines.append("| " + " | ".join(cells) + " |")
    sentences = [c.sentence() for c in comparisons.values()]
    if sentences:
        lines += [""] + [f"- {s}" for s in sentences]
    controls = control_comparisons(runs, key)
    if controls:
        lines += ["", CONTROL_INTRO] + [f"- {c.sentence()}" for c in controls]
    return "\n".join(lines) + "\n"
