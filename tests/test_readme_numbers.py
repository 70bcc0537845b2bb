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


# The CPU track before the recipe changes: docs/RESULTS.md's history section, never the README.
CPU_TRACK = "market1501_cpu_2026-12-03.json"
# The CPU track of the current recipe: one record merged from its runs (scripts/market_cpu_results.py).
CPU_RECORD = "market1501_cpu_recipe_2026-12-06.json"
SCRIPT = REPO / "scripts" / "market_cpu_results.py"

# README "What we measured", the table after the generated CPU-track block: (text that identifies the
# row, results file, the values of its result cell in order).
HEADLINES: list[tuple[str, str, Callable[[dict[str, Any]], list[float]]]] = [
    ("Market-size evaluation", "evaluation_2026-12-03_keyed_2threads_idle.json",
     lambda r: [r["cases"]["market_hard"]["ours_best_s"], r["cases"]["market_hard"]["speedup_best"]]),
    ("ResNet-50 inference", "inference_cpu_2026-12-03.json",
     lambda r: [backbone(r, "resnet50")["onnxruntime"]["batch64_img_per_s"],
                backbone(r, "resnet50")["pytorch"]["batch64_img_per_s"]]),
    ("int8 export of the CPU-track baseline", "int8_market_cpu_2026-12-07_final.json",
     lambda r: [100 * r["accuracy"][0]["int8_mAP"], 100 * r["accuracy"][0]["fp32_mAP"], r["accuracy"][0]["speedup"]]),
]


def section_table(text: str, heading: str, after: str | None = None) -> list[list[str]]:
    """The cells of the first markdown table after ``heading`` (and after ``after`` when given; header and
    rule rows dropped)."""
    start = text.index(heading)
    if after is not None:
        start = text.index(after, start)
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
    rows = section_table((REPO / "README.md").read_text(), "## What we measured", after=END_OF_BLOCK)
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
    """Every cell of docs/RESULTS.md's history table (the earlier recipe), from market1501_cpu_2026-12-03.json."""
    text = (REPO / "docs" / "RESULTS.md").read_text()
    assert f"(../benchmarks/results/{CPU_TRACK})" in text
    record = load(CPU_TRACK)
    rows = section_table(text, "## History: the CPU track before the recipe changes")
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


# --- the generated CPU-track blocks (current recipe) ----------------------------------------------

END_OF_BLOCK = "<!-- end of the generated block -->"


@pytest.fixture(scope="module")
def results_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("market_cpu_results", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("doc", ["README.md", "docs/RESULTS.md"])
def test_cpu_track_blocks_are_generated_from_the_current_record(doc: str, results_script) -> None:
    """The block equals what `--readme` writes today from the record it names: regenerate after a merge."""
    text = (REPO / doc).read_text()
    (found,) = list(results_script.BLOCK.finditer(text))
    assert found.group(1) == f"benchmarks/results/{CPU_RECORD}"
    record = load(CPU_RECORD)
    recorded = {m["model"] for m in record["models"]}
    record["not_run"] = [n for n in results_script.declared_models() if n not in recorded]
    block = (results_script.readme_block(record, found.group(1), results_script.declared_models()) if doc == "README.md"
             else results_script.results_block(record, found.group(1)))
    assert found.group(0) == block, (f"{doc}'s CPU-track block is stale: run python scripts/market_cpu_results.py "
                                     f"--readme benchmarks/results/{CPU_RECORD}")


def test_readme_cpu_track_rows_equal_the_record() -> None:
    """Independently of the generator: each row's per-seed mAPs, machine and date are the record's, and every
    model declared but not recorded is named as pending."""
    text = (REPO / "README.md").read_text()
    record = load(CPU_RECORD)
    rows = section_table(text, "## What we measured", after="<!-- generated by:")
    groups = record["seed_groups"]["mAP"]["groups"]
    assert len(rows) == len(groups) >= 1
    for row, group in zip(rows, groups):
        what, result, machine, source = row
        members = [model(record, name) for name in group["runs"]]
        assert f"`{group['name']}`" in what and f"(benchmarks/results/{CPU_RECORD})" in source
        written = numbers(result)[:len(members)]
        check_row(what, " ".join(written), [100 * m["mAP"] for m in members])
        for m in members:
            assert m["machine"]["cpu"] in machine and f"{m['machine']['cpu_count']}-core" in machine
            assert str(m["date"])[:10] in machine
    block = text[text.index("<!-- generated by:"):text.index(END_OF_BLOCK)]
    recorded = {m["model"] for m in record["models"]}
    import yaml

    declared = yaml.safe_load((REPO / "scripts" / "market_cpu_params.yaml").read_text())["evaluate"]["models"]
    for name in declared:
        if name not in recorded:
            assert f"`{name}`" in block.split("Not yet run under this recipe:")[1], f"{name} is neither recorded nor pending"
    # One recipe only: no row of the earlier record is in the README.
    assert CPU_TRACK not in text
