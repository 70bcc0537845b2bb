"""Our protocol against the official Market-1501 ground truth (``gt_query/*_good.mat`` / ``_junk.mat``).

The official lists hold 1-based indices into the sorted list of *all* ``bounding_box_test`` files
(pid -1 junk and the ``.jpg.jpg`` names included). A query ``X.jpg`` (or ``X.jpg.jpg``) has its lists
in ``X_good.mat`` / ``X_junk.mat``.

What the official lists contain (checked here on all 3,368 queries):
* good == same identity, other camera: exactly our relevant set;
* junk == same identity and same camera: exactly our junk set. The lists never name a pid -1 image:
  the official evaluation code adds every pid -1 image to each query's junk itself, which is what we
  do by dropping them when the dataset is read.
* Format trap: a query without junk stores ``junk_index = [0]`` (13 queries; an invalid 1-based index
  used as "empty", in a uint8 array that wraps to 255 if one subtracts 1 before widening), and one
  (``1488_c6s3_094992_00``) stores an empty array.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from reid.evaluation.metrics import evaluate_distances, protocol_masks

pytestmark = pytest.mark.market

NAME = re.compile(r"^(-?\d+)_c(\d)s\d+_\d+_\d+(?:\.jpg)+$")


def _parse(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    pids, cams = [], []
    for name in names:
        m = NAME.match(name)
        assert m, f"unparsable Market file name {name!r}"
        pids.append(int(m.group(1)))
        cams.append(int(m.group(2)))
    return np.array(pids), np.array(cams)


def _stem(name: str) -> str:
    """``0001_c1s1_001051_00.jpg`` and ``1488_c1s6_023021_00.jpg.jpg`` -> name up to the first .jpg."""
    return name[: name.index(".jpg")]


@pytest.fixture(scope="module")
def official(market_root: Path) -> dict:
    import scipy.io

    test_names = sorted(p.name for p in (market_root / "bounding_box_test").iterdir() if p.name.endswith(".jpg"))
    query_names = sorted(p.name for p in (market_root / "query").iterdir() if p.name.endswith(".jpg"))
    gt = market_root / "gt_query"

    def indices(path: Path, key: str) -> np.ndarray:
        raw = scipy.io.loadmat(str(path))[key].ravel().astype(np.int64)  # widen before subtracting
        return raw[raw > 0] - 1  # [0] means "none"; 1-based -> 0-based

    good = [indices(gt / f"{_stem(q)}_good.mat", "good_index") for q in query_names]
    junk = [indices(gt / f"{_stem(q)}_junk.mat", "junk_index") for q in query_names]
    t_pids, t_cams = _parse(test_names)
    q_pids, q_cams = _parse(query_names)
    return dict(test_names=test_names, query_names=query_names, good=good, junk=junk,
                t_pids=t_pids, t_cams=t_cams, q_pids=q_pids, q_cams=q_cams)


def test_layout_and_jpg_jpg_queries(official: dict) -> None:
    assert len(official["test_names"]) == 19732 and len(official["query_names"]) == 3368
    doubled = [q for q in official["query_names"] if q.endswith(".jpg.jpg")]
    assert len(doubled) == 6 and all(q.startswith("1488_") for q in doubled)
    assert (official["t_pids"] != -1).sum() == 15913  # the gallery after dropping pid -1
    assert 1488 in set(official["q_pids"].tolist())


def test_protocol_sets_equal_official_good_and_junk(official: dict) -> None:
    keep = np.flatnonzero(official["t_pids"] != -1)  # our gallery: pid -1 dropped at load
    full_index = keep  # gallery position -> index in the official (all-files) list
    relevant, junk = protocol_masks(
        torch.as_tensor(official["q_pids"]), torch.as_tensor(official["q_cams"]),
        torch.as_tensor(official["t_pids"][keep]), torch.as_tensor(official["t_cams"][keep]),
    )
    minus_one = set(np.flatnonzero(official["t_pids"] == -1).tolist())
    mismatched = []
    for i, q in enumerate(official["query_names"]):
        ours_good = set(full_index[relevant[i].numpy()].tolist())
        ours_junk = set(full_index[junk[i].numpy()].tolist())
        off_good, off_junk = set(official["good"][i].tolist()), set(official["junk"][i].tolist())
        if ours_good != off_good or ours_junk != off_junk or off_junk & minus_one:
            mismatched.append(q)
    assert not mismatched, f"{len(mismatched)} queries differ from the official lists, e.g. {mismatched[:5]}"
    assert all(len(g) > 0 for g in official["good"])  # no Market query is skipped


def _official_trapezoidal_ap(order: np.ndarray, good: np.ndarray, junk: np.ndarray) -> float:
    """The official MATLAB compute_AP on one ranking of all test files (vectorised, same arithmetic)."""
    ranked = order[~np.isin(order, junk)]
    pos = np.flatnonzero(np.isin(ranked, good)) + 1.0
    i = np.arange(1, len(pos) + 1)
    before = np.where(pos > 1, (i - 1) / np.maximum(pos - 1, 1), 1.0)
    return float(np.sum((before + i / pos) / 2) / len(good))


def test_ap_with_official_lists_equals_ours(official: dict) -> None:
    rng = np.random.default_rng(0)
    sel = np.unique(np.concatenate([np.linspace(0, 3367, 300).astype(int),
                                    np.flatnonzero(official["q_pids"] == 1488)]))
    dist = rng.random((len(sel), len(official["test_names"]))).astype(np.float32)
    minus_one = np.flatnonzero(official["t_pids"] == -1)
    keep = np.flatnonzero(official["t_pids"] != -1)
    ours = evaluate_distances(dist[:, keep], official["q_pids"][sel], official["t_pids"][keep],
                              official["q_cams"][sel], official["t_cams"][keep], ap_variant="trapezoidal")
    expected = [
        _official_trapezoidal_ap(np.argsort(dist[r], kind="stable"), official["good"][q],
                                 np.union1d(official["junk"][q], minus_one))
        for r, q in enumerate(sel)
    ]
    np.testing.assert_allclose(ours.ap_per_query, expected, rtol=0, atol=1e-12)
