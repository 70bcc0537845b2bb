"""Seed replicates, references and which differences exceed the seed spread (``reid.seed_spread``)."""

from __future__ import annotations

import pytest

from reid.config import validate
from reid.seed_spread import (CONTROL_INTRO, EXCEEDS, UNDECIDED, WITHIN, Run, control_comparisons, differences,
                              group_markdown, groups, paired_comparisons, replicate_signature, spread_markdown)


def config(seed: int = 0, backbone: str = "resnet34", out: str = "pipeline/models/x", **kd):
    return validate({"model": {"backbone": backbone, "pretrained": "none"},
                     "train": {"seed": seed, "output_dir": out}, "kd": kd, "tracking": {"enabled": False}}, "test")


TEACHER = "pipeline/models/baseline/last.pt"


def runs_with_two_baseline_seeds() -> list[Run]:
    return [
        Run("baseline", config(0, out="pipeline/models/baseline"), {"mAP": 40.0, "rank1": 60.0}),
        Run("baseline_s1", config(1, out="pipeline/models/baseline_s1"), {"mAP": 41.0, "rank1": 63.0}),
        Run("sd_003", config(0, self_distill=True), {"mAP": 42.0, "rank1": 62.0}),
        Run("r18", config(0, backbone="resnet18"), {"mAP": 30.0, "rank1": 50.0}),
        Run("kd_r18", config(0, backbone="resnet18", teacher_checkpoint=TEACHER), {"mAP": 30.5, "rank1": 52.0}),
    ]


def test_replicates_differ_only_by_seed_and_output_dir():
    assert replicate_signature(config(0, out="a")) == replicate_signature(config(7, out="b"))
    assert replicate_signature(config(0)) != replicate_signature(config(0, self_distill=True))
    assert replicate_signature(config(0)) != replicate_signature(config(0, backbone="resnet18"))


def test_deltas_are_to_the_reference_mean_and_count_only_beyond_the_spread():
    diffs = {d.run.name: d for d in differences(runs_with_two_baseline_seeds())}
    base = diffs["baseline"].reference
    assert [r.name for r in base.runs] == ["baseline", "baseline_s1"]
    assert base.mean("mAP") == pytest.approx(40.5) and base.spread("mAP") == pytest.approx(1.0)
    assert base.spread("rank1") == pytest.approx(3.0)
    assert diffs["baseline"].replicate and diffs["baseline_s1"].replicate
    sd = diffs["sd_003"]
    assert not sd.replicate and sd.reference is base
    # mAP +1.5 > spread 1.0: real; rank1 62 - 61.5 = +0.5 < spread 3.0: not.
    assert sd.delta["mAP"] == pytest.approx(1.5) and sd.beyond["mAP"] is True
    assert sd.delta["rank1"] == pytest.approx(0.5) and sd.beyond["rank1"] is False


def test_a_student_is_measured_against_its_own_backbone_without_a_teacher():
    diffs = {d.run.name: d for d in differences(runs_with_two_baseline_seeds())}
    kd = diffs["kd_r18"]
    assert kd.reference.name == "r18" and not kd.fallback
    assert kd.delta["mAP"] == pytest.approx(0.5)
    # r18 ran once: its spread is unknown, so nothing is declared real.
    assert kd.beyond["mAP"] is None and kd.reference.spread("mAP") is None
    assert diffs["r18"].replicate  # the student-alone row is its own reference


def test_student_without_a_no_kd_row_falls_back_to_the_baseline_and_says_so():
    runs = [r for r in runs_with_two_baseline_seeds() if r.name != "r18"]
    kd = {d.run.name: d for d in differences(runs)}["kd_r18"]
    assert kd.reference.name == "baseline" and kd.fallback
    assert kd.delta["mAP"] == pytest.approx(-10.0) and kd.beyond["mAP"] is True
    assert "| kd_r18 | baseline (other backbone) |" in spread_markdown(runs)


def test_markdown_states_the_spread_the_runs_and_the_verdicts():
    text = spread_markdown(runs_with_two_baseline_seeds())
    assert "reference **baseline** (resnet34, 2 runs): mAP mean 40.5, spread 1.0; rank1 mean 61.5, spread 3.0" in text
    assert "baseline (seed 0) 40.0, baseline_s1 (seed 1) 41.0" in text
    assert "reference **r18** (resnet18, 1 run): mAP mean 30.0, spread unknown (one seed)" in text
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert rows["sd_003"] == "| sd_003 | baseline | 42.0 | +1.5* | 62.0 | +0.5 | yes |"
    assert rows["baseline_s1"].endswith("| (replicate) |")
    assert rows["kd_r18"] == "| kd_r18 | r18 | 30.5 | +0.5 | 52.0 | +2.0 | spread unknown (one seed) |"


def test_one_seed_everywhere_says_the_spread_is_unknown():
    runs = [Run("baseline", config(0), {"mAP": 40.0, "rank1": 60.0}),
            Run("sd_003", config(0, self_distill=True), {"mAP": 45.0, "rank1": 65.0})]
    sd = differences(runs)[1]
    assert sd.delta["mAP"] == pytest.approx(5.0) and sd.beyond["mAP"] is None
    assert "| sd_003 | baseline | 45.0 | +5.0 | 65.0 | +5.0 | spread unknown (one seed) |" in spread_markdown(runs)
    assert spread_markdown([]) == ""


def kd_runs(baseline_maps, kd_maps) -> list[Run]:
    """ResNet-18 baseline and its born-again KD student, one model per seed (seed = list index)."""
    runs = [Run("baseline" if s == 0 else f"baseline_s{s}", config(s, backbone="resnet18", out=f"b{s}"),
                {"mAP": v, "rank1": v + 20}) for s, v in enumerate(baseline_maps)]
    runs += [Run("kd_r18" if s == 0 else f"kd_r18_s{s}",
                 config(s, backbone="resnet18", out=f"k{s}", teacher_checkpoint=TEACHER), {"mAP": v, "rank1": v + 20})
             for s, v in enumerate(kd_maps)]
    return runs


def test_groups_collect_the_seed_replicates_in_order():
    found = groups(kd_runs([34.0, 35.0, 34.5], [36.0, 37.0]))
    assert [[r.name for r in g.runs] for g in found] == [["baseline", "baseline_s1", "baseline_s2"],
                                                          ["kd_r18", "kd_r18_s1"]]
    assert groups([]) == []


def test_paired_comparison_per_seed_with_mean_min_max():
    (comp,) = paired_comparisons(kd_runs([34.0, 35.0, 34.5], [36.0, 35.5, 37.5]))
    assert comp.group.name == "kd_r18" and comp.reference.name == "baseline"
    assert [(p.seed, p.delta) for p in comp.pairs] == [(0, pytest.approx(2.0)), (1, pytest.approx(0.5)),
                                                        (2, pytest.approx(3.0))]
    assert comp.delta_stats() == (pytest.approx(11 / 6), pytest.approx(0.5), pytest.approx(3.0))
    assert comp.gain == pytest.approx(36.333333 - 34.5)
    # The baseline's range is 1.0 and the mean gain 1.83: it exceeds the range, though seed 1's delta does not.
    assert comp.verdict() == EXCEEDS
    text = comp.sentence()
    assert "the gain of +1.8 exceeds `baseline`'s seed-to-seed range of 1.0" in text
    assert "paired per seed +2.0, +0.5, +3.0 (mean +1.8, min +0.5, max +3.0; 2 of 3 beyond the range)" in text


@pytest.mark.parametrize("baseline_maps, kd_maps, verdict, words", [
    ([34.0, 36.0, 35.0], [36.0, 36.5, 36.0], WITHIN, "the gain of +1.2 does not exceed"),  # range 2.0
    ([34.0, 34.2], [33.0, 33.1], EXCEEDS, "the difference of -1.1 exceeds"),  # a loss beyond the range counts too
    ([34.0], [36.0, 37.0, 38.0], UNDECIDED, "`baseline` has 1 seed"),
    ([34.0, 35.0, 34.5], [40.0], UNDECIDED, "`kd_r18` has 1 seed"),
])
def test_verdict_needs_two_seeds_in_each_group(baseline_maps, kd_maps, verdict, words):
    (comp,) = paired_comparisons(kd_runs(baseline_maps, kd_maps))
    assert comp.verdict() == verdict
    assert words in comp.sentence()
    if verdict == UNDECIDED:
        assert "undecided" in comp.sentence() and "exceed" not in comp.sentence()


def test_a_seed_without_a_partner_counts_in_the_mean_but_not_in_the_pairs():
    runs = kd_runs([34.0, 35.0], [36.0, 36.0, 39.0])  # no baseline of seed 2
    (comp,) = paired_comparisons(runs)
    assert [p.seed for p in comp.pairs] == [0, 1]
    assert comp.gain == pytest.approx(37.0 - 34.5)
    assert comp.delta_stats() == (pytest.approx(1.5), pytest.approx(1.0), pytest.approx(2.0))


def test_group_markdown_table_and_sentences():
    text = group_markdown(kd_runs([34.0, 35.0, 34.5], [36.0, 35.5, 37.5]))
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert rows["baseline"] == ("| baseline | (reference) | 3 | 0: 34.0, 1: 35.0, 2: 34.5 | 34.5 | 1.0 | - | - | - "
                                "| - | - |")
    assert rows["kd_r18"] == ("| kd_r18 | baseline | 3 | 0: 36.0, 1: 35.5, 2: 37.5 | 36.3 | 2.0 | +1.8 | "
                              "0: +2.0, 1: +0.5, 2: +3.0 | +1.8 | +0.5 / +3.0 | exceeds |")
    assert "- `kd_r18` (3 seeds, mean mAP 36.3) vs `baseline` (3 seeds, mean 34.5)" in text
    only_baseline = group_markdown(kd_runs([34.9], []))
    assert "| baseline | (reference) | 1 | 0: 34.9 | 34.9 | unknown |" in only_baseline
    assert "- `" not in only_baseline  # nothing to compare, so no verdict
    assert group_markdown([]) == ""


def sd_runs(**maps) -> list[Run]:
    """A resnet18 baseline, the deep-supervision control and self-distillation variants; ``maps`` gives each
    name's mAP per seed (seed = list index)."""
    kinds = {"baseline": {}, "ds_ctrl": {"self_distill": True, "feature_loss_coefficient": 0.0},
             "sd_003": {"self_distill": True, "feature_loss_coefficient": 0.03},
             "sd_030": {"self_distill": True, "feature_loss_coefficient": 0.3},
             "sd_seed003": {"self_distill": True, "feature_loss_coefficient": 0.03, "feature_reduction": "batch_norm"},
             "sd_l3": {"self_distill": True, "feature_loss_coefficient": 0.03, "student_stages": ["layer2"]}}
    return [Run(name if s == 0 else f"{name}_s{s}", config(s, backbone="resnet18", out=f"{name}{s}", **kinds[name]),
                {"mAP": v, "rank1": v + 20}) for name, values in maps.items() for s, v in enumerate(values)]


def test_self_distillation_is_paired_with_its_feature_loss_off_control():
    runs = sd_runs(baseline=[34.9, 34.6], ds_ctrl=[36.0, 36.4], sd_003=[36.2, 36.3], sd_030=[35.0],
                   sd_seed003=[33.0], sd_l3=[35.5])
    found = {c.group.name: c for c in control_comparisons(runs)}
    # Each feature-loss variant against ds_ctrl, even sd_seed003, whose reduction is unused at coefficient 0;
    # sd_l3 trains other stage heads, so ds_ctrl is not its control and it has none.
    assert set(found) == {"sd_003", "sd_030", "sd_seed003"}
    assert all(c.reference.name == "ds_ctrl" for c in found.values())
    sd = found["sd_003"]
    assert [(p.seed, p.delta) for p in sd.pairs] == [(0, pytest.approx(0.2)), (1, pytest.approx(-0.1))]
    assert sd.gain == pytest.approx(0.05) and sd.verdict() == WITHIN  # ds_ctrl's range is 0.4
    assert found["sd_030"].verdict() == UNDECIDED and "(mAP difference -1.2 so far)" in found["sd_030"].sentence()
    # The baseline comparison is unchanged: every group still has the baseline as its reference.
    assert {c.group.name: c.reference.name for c in paired_comparisons(runs)} == {
        "ds_ctrl": "baseline", "sd_003": "baseline", "sd_030": "baseline", "sd_seed003": "baseline",
        "sd_l3": "baseline"}
    text = group_markdown(runs)
    assert CONTROL_INTRO in text
    assert "- `sd_003` (2 seeds, mean mAP 36.2) vs `ds_ctrl` (2 seeds, mean 36.2): the gain of +0.0 does not " \
           "exceed `ds_ctrl`'s seed-to-seed range of 0.4" in text


def test_no_control_comparison_without_the_control_or_a_feature_loss():
    assert control_comparisons(sd_runs(baseline=[34.9], sd_003=[36.0])) == []  # ds_ctrl not run
    assert control_comparisons(sd_runs(baseline=[34.9, 35.0], ds_ctrl=[36.0])) == []  # nothing to control
    assert CONTROL_INTRO not in group_markdown(sd_runs(baseline=[34.9], sd_003=[36.0]))
