"""The numbers the README and docs/RESULTS.md state equal the results files they cite.

A number copied by hand drifts: a results file is rerun, a table is edited, a rounding slips (the
README once said 21.5 for a recorded 0.21557). These tests parse the tables, load the JSON each row
links, and compare every number at the precision it is written with. A row without a check here fails
too, so a new headline number comes with its source.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

import pytest

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?")


def load(name: str) -> dict[str, Any]:
    return json.loads((RESULTS / name).read_text())


def model(record: dict[str, Any], name: str) -> dict[str, Any]:
    return next(m for m in record["models"] if m["model"] == name)


def backbone(record: dict[str, Any], name: str) -> dict[str, Any]:
    return next(r for r in record["results"] if r["backbone"] == name)


CPU_TRACK = "market1501_cpu_2026-12-03.json"

# README "What we measured": (text that identifies the row, results file, the values of its result cell in order).
HEADLINES: list[tuple[str, str, Callable[[dict[str, Any]], list[float]]]] = [
    ("ResNet-18 baseline, seeds 0 / 1", CPU_TRACK,
     lambda r: [100 * model(r, "baseline")["mAP"], 100 * model(r, "baseline_s1")["mAP"]]),
    ("baseline rerun after the recipe changes", "market1501_cpu_2026-12-06_baseline_recipe.json",
     lambda r: [100 * model(r, "baseline")["mAP"]]),
    ("offline KD", CPU_TRACK,
     lambda r: [100 * model(r, "kd_r18")["mAP"], r["seed_spread"]["models"]["kd_r18"]["mAP_delta"]]),
    ("`ds_ctrl`", CPU_TRACK,
     lambda r: [100 * model(r, "ds_ctrl")["mAP"], 100 * model(r, "sd_003")["mAP"]]),
    ("Market-size evaluation", "evaluation_2026-12-03_keyed_2threads_idle.json",
     lambda r: [r["cases"]["market_hard"]["ours_best_s"], r["cases"]["market_hard"]["speedup_best"]]),
    ("ResNet-50 inference", "inference_cpu_2026-12-03.json",
     lambda r: [backbone(r, "resnet50")["onnxruntime"]["batch64_img_per_s"],
                backbone(r, "resnet50")["pytorch"]["batch64_img_per_s"]]),
]


def section_table(text: str, heading: str) -> list[list[str]]:
    """The cells of the first markdown table after ``heading`` (header and rule rows dropped)."""
    start = text.index(heading)
    rows = []
    for line in text[start:].splitlines()[1:]:
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif rows:
            break
    return rows[2:]


def numbers(cell: str) -> list[str]:
    return NUMBER.findall(cell)


def same(written: str, value: float) -> bool:
    """``written`` is ``value`` rounded to the decimals ``written`` shows (a leading + allowed)."""
    text = written.replace(",", "").lstrip("+")
    decimals = len(text.split(".")[1]) if "." in text else 0
    rounded = f"{value:.{decimals}f}"
    if float(rounded) == 0:
        rounded = rounded.lstrip("-")  # -0.0 is written 0.0
    return rounded == text


def check_row(what: str, cell: str, expected: list[float]) -> None:
    written = numbers(cell)
    assert len(written) == len(expected), f"{what!r}: {cell!r} holds {written}, the record gives {expected}"
    for text, value in zip(written, expected):
        assert same(text, value), f"{what!r}: written {text}, the record says {value}"


def test_readme_headline_numbers_equal_their_results_files() -> None:
    rows = section_table((REPO / "README.md").read_text(), "## What we measured")
    assert len(rows) >= len(HEADLINES), rows
    for what, result, machine, source in rows:
        spec = [h for h in HEADLINES if h[0] in what]
        assert len(spec) == 1, f"README row {what!r} has no check (or several) in {__file__}: add its source"
        _, file, values = spec[0]
        assert f"(benchmarks/results/{file})" in source, f"{what!r} must link benchmarks/results/{file}"
        record = load(file)
        check_row(what, result, values(record))
        assert str(record["date"])[:10] in machine, f"{what!r}: the record's date is {record['date']}"
        cpu = record["machine"]["cpu"]
        cores = record["machine"].get("cpu_count") or record["machine"].get("cores")
        assert cpu in machine and f"{cores}-core" in machine, f"{what!r}: the record's machine is {cores} x {cpu}"


def test_results_cpu_track_table_equals_its_record() -> None:
    """Every cell of docs/RESULTS.md's CPU-track table, from market1501_cpu_2026-12-03.json."""
    text = (REPO / "docs" / "RESULTS.md").read_text()
    assert f"(../benchmarks/results/{CPU_TRACK})" in text
    record = load(CPU_TRACK)
    rows = section_table(text, "## Market-1501, CPU track")
    assert [r[0] for r in rows] == [m["model"] for m in record["models"]]
    spread = record["seed_spread"]["models"]
    for row in rows:
        m = model(record, row[0])
        assert row[1:5] == [m["backbone"], m["kd_mode"], str(m["seed"]), str(m["epochs"])], row
        expected = [100 * m[k] for k in ("mAP", "mAP_trapezoidal", "rank1", "rank5", "rank10", "mINP")]
        expected += [m["wall_time_s"] / 60, m["train_img_per_s"], spread[m["model"]]["mAP_delta"]]
        check_row(row[0], " ".join(row[5:14]), expected)
        beyond = "(seed replicate)" if spread[m["model"]]["replicate"] else (
            "yes" if spread[m["model"]]["mAP_beyond_spread"] else "no")
        assert row[14] == beyond, row


@pytest.mark.parametrize("written, value, ok", [("31.9", 0.31935 * 100, True), ("21.5", 21.557, False),
                                                ("+2.5", 2.4596, True), ("-2.0", -2.0164, True),
                                                ("10.0", 10.01, True), ("0.384", 0.384, True),
                                                ("0.38", 0.384, True), ("1.5", 2.61, False)])
def test_number_comparison_rounds_as_written(written: str, value: float, ok: bool) -> None:
    assert same(written, value) is ok
