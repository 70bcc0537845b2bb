"""The MLflow UI as a user sees it: `reid ui`'s comparison page rendered by a real (headless) Chromium.

A store is filled with two training runs the way the pipeline logs them (the Tracker, run tags, the
active parameters, the manifest as a dataset input, the reported model's ``eval/*`` metrics); the
comparison view is published as `reid ui` publishes it, the server is started with `reid ui`'s own
command line on 127.0.0.1, and Chromium renders the page. The assertions read the rendered runs
table (the DOM after MLflow's JavaScript ran), not the REST API: both runs are there, best mAP first,
each with its mAP, its kd mode, its feature-loss coefficient and its dataset.

Needs Chromium (Debian: ``apt-get install chromium``; .ci/run installs it); skipped without one.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# The network is closed on CI machines: nothing that phones home, no sandbox (root in a container).
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=2560,1000")  # wide enough that ag-grid draws every compared column


def find_browser() -> str | None:
    explicit = os.environ.get("REID_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


class RunsTable(HTMLParser):
    """The cells of MLflow's runs table (ag-grid): ``{row index: {column id: text}}``.

    ag-grid draws one row in several containers (pinned left, centre), each an element with
    ``row-index``; cells carry ``col-id``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[int, dict[str, str]] = {}
        self._stack: list[tuple[str, int | None, str | None]] = []  # (tag, row, col) per open element
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        row, col = (self._stack[-1][1], self._stack[-1][2]) if self._stack else (None, None)
        if a.get("row-index", "").isdigit():
            row = int(a["row-index"])
        if row is not None and a.get("col-id") and "ag-cell" in (a.get("class") or ""):
            col = a["col-id"]
            self.rows.setdefault(row, {})[col] = ""
        if tag not in ("br", "img", "input", "meta", "link", "hr", "wbr", "path", "circle", "rect", "line"):
            self._stack.append((tag, row, col))

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self._stack) - 1, -1, -1):
            if self._stack[i][0] == tag:
                del self._stack[i:]
                return

    def handle_data(self, data: str) -> None:
        if any(tag in ("style", "script", "label") for tag, _, _ in self._stack):
            return  # inline CSS, and the run colour picker's screen-reader text (#b45091), are not shown
        self.text.append(data)
        if self._stack and self._stack[-1][1] is not None and self._stack[-1][2] is not None:
            _, row, col = self._stack[-1]
            self.rows[row][col] = (self.rows[row][col] + data).strip()


def render(browser: str, url: str, budget_ms: int) -> str:
    """The DOM of ``url`` after ``budget_ms`` of (virtual) time, from a fresh profile."""
    with tempfile.TemporaryDirectory(prefix="reid-chromium-") as profile:
        out = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                              f"--virtual-time-budget={budget_ms}", "--dump-dom", url],
                             capture_output=True, text=True, timeout=120)
    return out.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def two_runs(tmp_path: Path, synthetic_manifest, synthetic_root: Path) -> tuple[Path, dict[str, float]]:
    """params.yaml of a store holding a baseline and a self-distilled run, logged like the pipeline does."""
    from reid.config import load_config
    from reid.evaluation.naming import EPOCH_EVAL_PREFIX, metric_key
    from reid.tracking import Tracker, run_tags

    tracking = {"enabled": True, "uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                "artifact_root": str(tmp_path / "mlruns"), "experiment": "ui-browser"}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "data": {"root": str(synthetic_root), "manifest": str(tmp_path / "manifest.json")},
        "train": {"device": "cpu"}, "tracking": tracking,
        "variants": {"sd_010": {"kd": {"self_distill": True, "feature_loss_coefficient": 0.1}}},
    }))
    maps = {"baseline": 0.4123, "sd_010": 0.5377}
    for variant, value in maps.items():
        config = load_config(params, variant=None if variant == "baseline" else variant)
        tracker = Tracker(config.tracking, base=tmp_path)
        with tracker.start(run_name=variant, tags=run_tags(config, variant=variant, base=tmp_path)):
            tracker.log_params(config.active_flat())
            tracker.log_dataset(synthetic_manifest, "train")
            for epoch in (1, 2):
                tracker.log_metrics({metric_key("mAP", EPOCH_EVAL_PREFIX): value * epoch / 2}, step=epoch)
            tracker.log_metrics({metric_key("mAP"): value, metric_key("rank1"): value + 0.2,
                                 metric_key("mINP"): value / 2}, step=2)
    return params, maps


@pytest.fixture()
def browser() -> str:
    """The browser's path; skips (before any store is built) without one."""
    path = find_browser()
    if path is None:
        pytest.skip("no Chromium on PATH (Debian: apt-get install chromium; or set REID_CHROMIUM): the test "
                    "renders the MLflow UI in a real browser")
    return path


def test_reid_ui_page_shows_both_runs_with_their_map_in_chromium(browser: str, two_runs: tuple[Path, dict[str, float]],
                                                                 synthetic_manifest) -> None:
    from reid.commands.ui import comparison_page, ui_command_line, wait_for_server

    params, maps = two_runs
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    url, message = comparison_page(params, base_url)
    assert url is not None and "baseline" in message and "sd_010" in message, message
    assert "workflowType=machine_learning" in url  # the "Model training" view, not the GenAI overview

    argv, env_add = ui_command_line(params, "127.0.0.1", port)
    assert env_add == {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"} and argv[argv.index("--workers") + 1] == "1"
    log = params.parent / "server.log"
    with log.open("wb") as sink:
        server = subprocess.Popen(argv, env={**os.environ, **env_add}, stdout=sink, stderr=subprocess.STDOUT,
                                  cwd=params.parent, start_new_session=True)
    try:
        assert wait_for_server(base_url, server, timeout_s=90), log.read_text()[-3000:]
        table = RunsTable()
        for budget in (15_000, 40_000, 90_000):  # a loaded machine renders slower; virtual time waits for fetches
            table = RunsTable()
            table.feed(render(browser, url, budget))
            if len(table.rows) >= 2:
                break
        names = {row: cells.get("attributes.`Run Name`", "") for row, cells in table.rows.items()}
        page = " ".join(table.text)[:2000]
        assert sorted(names.values()) == ["baseline", "sd_010"], (table.rows, page)
        # Best mAP first (the view's sort), each run with its own number on the rendered page.
        assert [names[i] for i in sorted(names)] == ["sd_010", "baseline"], table.rows
        for cells in table.rows.values():
            name = cells["attributes.`Run Name`"]
            assert float(cells["metrics.`eval/mAP`"]) == pytest.approx(maps[name]), cells
            assert float(cells["metrics.`eval/rank1`"]) == pytest.approx(maps[name] + 0.2, abs=1e-6), cells
            assert cells["tags.`kd_mode`"] == ("none" if name == "baseline" else "self"), cells
            assert cells["params.`kd.feature_loss_coefficient`"] == ("-" if name == "baseline" else "0.1"), cells
            # The Dataset column: the manifest's name and digest (its content hash), logged as an input.
            assert synthetic_manifest.content_hash[:12] in cells["attributes.`Dataset`"], cells
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
