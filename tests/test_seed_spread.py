"""Seed replicates, references and which differences exceed the seed spread (``reid.seed_spread``)."""

from __future__ import annotations

import pytest

from reid.config import validate
from reid.seed_spread import Run, differences, replicate_signature, spread_markdown


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
