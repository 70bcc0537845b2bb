"""The VehicleID protocol (random one-image-per-identity galleries, averaged) and evaluation of data
without camera ids, on hand-made cases whose answers follow from the distances."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reid.config import EvalConfig
from reid.data.readers import one_per_identity_draws
from reid.data.samples import NO_CAMERA, Sample
from reid.errors import EvaluationError
from reid.evaluation.metrics import evaluate_distances
from reid.evaluation.protocols import evaluate_gallery_draws
from reid.evaluation.runner import evaluate_sample_features


def test_draws_pick_one_item_per_identity_reproducibly():
    pids = np.array([3, 3, 3, 7, 7, 9, 4, 4, 4, 4])
    draws = one_per_identity_draws(pids, 10, seed=5)
    for gallery in draws:
        assert sorted(pids[gallery].tolist()) == [3, 4, 7, 9]  # exactly one per identity
    assert all((a == b).all() for a, b in zip(draws, one_per_identity_draws(pids, 10, seed=5)))
    assert len({tuple(g) for g in draws}) > 1  # the draws differ from each other
    assert [tuple(g) for g in draws] != [tuple(g) for g in one_per_identity_draws(pids, 10, seed=6)]


def hand_case() -> tuple[np.ndarray, np.ndarray]:
    """a1, a2, a3 (identity 1) and b (identity 2). Every a is 0.5 from b; a1-a2 are close (0.1), a3 is
    far from both (0.9). b is always in the gallery, with one of the a's; the other two a's are queries.
    A query ranks its a first (AP 1, rank-1 hit) when that a is closer than b, else second (AP 0.5)."""
    d = np.array([[0.0, 0.1, 0.9, 0.5],
                  [0.1, 0.0, 0.9, 0.5],
                  [0.9, 0.9, 0.0, 0.5],
                  [0.5, 0.5, 0.5, 0.0]])
    return d, np.array([1, 1, 1, 2])


def test_vehicleid_protocol_hand_case():
    d, pids = hand_case()
    result, draws = evaluate_gallery_draws(d, pids, num_draws=12, seed=0, max_rank=2)
    # Gallery a1 or a2: the two queries get AP 1 (its close partner) and 0.5 (a3); gallery a3: 0.5 and 0.5.
    per_draw_map, per_draw_r1 = [], []
    for query, gallery in draws:
        assert 3 in gallery and len(gallery) == 2 and len(query) == 2
        a = int(gallery[0])
        per_draw_map.append(0.5 if a == 2 else 0.75)
        per_draw_r1.append(0.0 if a == 2 else 0.5)
    assert {0.5, 0.75} <= set(per_draw_map)  # both kinds of gallery were drawn
    assert result.mAP == pytest.approx(np.mean(per_draw_map), abs=1e-12)
    assert result.rank(1) == pytest.approx(np.mean(per_draw_r1), abs=1e-12)
    assert result.rank(2) == pytest.approx(1.0)
    assert result.num_queries == 2 and result.num_skipped_queries == 0 and result.cross_camera is False


def test_each_draw_is_the_standard_protocol_without_camera_rule():
    rng = np.random.default_rng(1)
    pids = np.repeat(np.arange(1, 7), [4, 3, 1, 5, 2, 3])  # identity 3 has one image: always gallery
    x = torch.from_numpy(rng.normal(size=(pids.size, 8)))
    d = torch.cdist(x, x)
    result, draws = evaluate_gallery_draws(d, pids, num_draws=1, seed=3)
    query, gallery = draws[0]
    zeros_q, zeros_g = np.zeros(query.size, int), np.zeros(gallery.size, int)
    direct = evaluate_distances(d[query][:, gallery], pids[query], pids[gallery], zeros_q, zeros_g, cross_camera=False)
    assert result.mAP == direct.mAP and (result.cmc == direct.cmc).all()
    assert result.num_queries == pids.size - len(set(pids.tolist()))  # every image but one per identity


def test_single_image_identities_leave_no_query():
    with pytest.raises(EvaluationError, match="single image"):
        evaluate_gallery_draws(np.zeros((3, 3)), [1, 2, 3], num_draws=2)


def samples(pids: list[int], camid: int, prefix: str) -> list[Sample]:
    return [Sample(f"/data/{prefix}{i:03d}.jpg", pid, camid) for i, pid in enumerate(pids)]


def one_hot(pids: list[int], dim: int = 8) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(pids), dim).float()


def test_runner_drops_camera_rule_for_data_without_cameras():
    # One "camera" everywhere: under the cross-camera rule every query would be skipped (an error).
    query, gallery = samples([1, 2], NO_CAMERA, "q"), samples([1, 2, 3], NO_CAMERA, "g")
    cfg = EvalConfig(num_ranked_lists=0, cross_camera=True)
    qf, gf = one_hot([1, 2]), one_hot([1, 2, 3])
    with pytest.raises(EvaluationError):
        evaluate_sample_features(qf, gf, query, gallery, cfg)
    result = evaluate_sample_features(qf, gf, query, gallery, cfg, has_cameras=False)
    assert result.mAP == 1.0 and result.num_valid_queries == 2 and result.cross_camera is False


def test_runner_vehicleid_protocol_pools_and_redraws():
    # Images of one identity share a feature: every draw ranks the right vehicle first.
    test = samples([1, 1, 1, 2, 2, 3, 3, 3, 3], NO_CAMERA, "img")
    gallery_idx = set(one_per_identity_draws(np.array([s.pid for s in test]), 1, seed=0)[0].tolist())
    query = [s for i, s in enumerate(test) if i not in gallery_idx]
    gallery = [s for i, s in enumerate(test) if i in gallery_idx]
    cfg = EvalConfig(gallery_draws=4, num_ranked_lists=2, ranked_list_size=3)
    result = evaluate_sample_features(one_hot([s.pid for s in query]), one_hot([s.pid for s in gallery]),
                                      query, gallery, cfg, has_cameras=False, protocol="vehicleid")
    assert result.mAP == 1.0 and result.rank(1) == 1.0
    assert result.num_queries == 6 and result.cross_camera is False
    # Draw 0 of seed 0 is the split the manifest stored: the ranked lists show its gallery.
    shown = {p for row in result.ranked_lists.gallery_paths for p in row if p is not None}
    assert shown <= {s.path for s in gallery}


def test_evaluate_model_reads_protocol_and_cameras_from_the_manifest(tmp_path, monkeypatch):
    """A VehicleID manifest (from the reader) is scored with re-drawn galleries and no camera rule."""
    from reid.config import validate
    from reid.data.datasets import read_dataset
    from reid.data.manifest import build_manifest
    from reid.evaluation.runner import evaluate_model

    (tmp_path / "image").mkdir()
    (tmp_path / "train_test_split").mkdir()
    lines = {"train_list.txt": [f"{i:07d} {i // 3}" for i in range(12)],
             "test_list_800.txt": [f"{i:07d} {i // 4}" for i in range(100, 116)]}  # 4 vehicles x 4 images
    for name, rows in lines.items():
        (tmp_path / "train_test_split" / name).write_text("\n".join(rows) + "\n")
        for row in rows:
            (tmp_path / "image" / f"{row.split()[0]}.jpg").write_bytes(b"")
    manifest = build_manifest(read_dataset("vehicleid", tmp_path))

    def build_test_loader(samples, config, device):  # one-hot images: a vehicle's images look alike
        images = torch.zeros(len(samples), 3, 8, 4)
        for i, s in enumerate(samples):
            images[i, 0, s.pid % 8, 0] = 1.0
        return [images[i : i + 5] for i in range(0, len(samples), 5)]

    import reid.evaluation.protocols as protocols

    draws_seen: list[list[np.ndarray]] = []
    real = protocols.evaluate_gallery_draws

    def spy(*args, **kwargs):
        result, draws = real(*args, **kwargs)
        draws_seen.append([g for _, g in draws])
        return result, draws

    monkeypatch.setattr(protocols, "evaluate_gallery_draws", spy)
    monkeypatch.setattr("reid.data.loaders.build_test_loader", build_test_loader)
    config = validate({"eval": {"gallery_draws": 3, "num_ranked_lists": 0, "cross_camera": True}})
    result = evaluate_model(torch.nn.Flatten(), manifest, config, "cpu")
    assert result.mAP == 1.0 and result.num_queries == 12 and result.cross_camera is False
    assert len(draws_seen) == 1 and len(draws_seen[0]) == 3  # pooled once, three galleries of 4 vehicles
    assert all(g.size == 4 for g in draws_seen[0])
