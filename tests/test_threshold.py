"""Same-identity thresholds (TAR at a chosen FAR): the pair counting, the operating points, ``same_identity``,
``reid evaluate`` writing and logging them, and ``reid search --threshold-file``.

The pair and threshold rules are checked against brute force on small random splits (every pair listed,
every candidate threshold tried), so the chunked, top-k-bounded computation must agree with the definition.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from reid.config import EvalConfig
from reid.errors import ReidError
from reid.evaluation.threshold import (OperatingPoint, Thresholds, load_thresholds, operating_points, pair_distances,
                                       same_identity, thresholds_from_features)


def _split(seed: int = 0, nq: int = 40, ng: int = 300, ids: int = 25):
    rng = np.random.default_rng(seed)
    q_pids, g_pids = rng.integers(0, ids, nq), rng.integers(0, ids, ng)
    q_cams, g_cams = rng.integers(1, 4, nq), rng.integers(1, 4, ng)
    centres = rng.standard_normal((ids, 16))
    qf = torch.from_numpy(centres[q_pids] + 0.8 * rng.standard_normal((nq, 16))).float()
    gf = torch.from_numpy(centres[g_pids] + 0.8 * rng.standard_normal((ng, 16))).float()
    return qf, gf, q_pids, g_pids, q_cams, g_cams


def _brute_pairs(qf, gf, q_pids, g_pids, q_cams, g_cams, cross_camera):
    qn, gn = torch.nn.functional.normalize(qf, dim=1), torch.nn.functional.normalize(gf, dim=1)
    d = (1 - qn @ gn.T).numpy()
    genuine, impostor = [], []
    for i in range(len(q_pids)):
        for j in range(len(g_pids)):
            if q_pids[i] == g_pids[j]:
                if not (cross_camera and q_cams[i] == g_cams[j]):
                    genuine.append(d[i, j])
            else:
                impostor.append(d[i, j])
    return np.sort(genuine), np.sort(impostor)


@pytest.mark.parametrize("cross_camera", [True, False])
@pytest.mark.parametrize("chunk", [7, 512])
def test_pairs_match_brute_force(cross_camera: bool, chunk: int) -> None:
    from reid.evaluation.distance import distance_producer

    qf, gf, qp, gp, qc, gc = _split()
    genuine, smallest, impostors = pair_distances(distance_producer(qf, gf, "cosine", True), qp, gp, qc, gc,
                                                  cross_camera, max_far=0.05, chunk_size=chunk)
    ref_gen, ref_imp = _brute_pairs(qf, gf, qp, gp, qc, gc, cross_camera)
    assert impostors == len(ref_imp)
    assert np.allclose(np.sort(genuine), ref_gen, atol=1e-6)
    keep = math.floor(0.05 * impostors) + 1
    assert len(smallest) == keep and np.allclose(smallest, ref_imp[:keep], atol=1e-6)


def test_operating_point_is_the_largest_threshold_within_the_far() -> None:
    qf, gf, qp, gp, qc, gc = _split(seed=1)
    ref_gen, ref_imp = _brute_pairs(qf, gf, qp, gp, qc, gc, True)
    cfg = EvalConfig(distance="cosine")
    found = thresholds_from_features(qf, gf, qp, gp, qc, gc, cfg, fars=(0.05, 0.01, 0.001))
    assert [p.target_far for p in found.points] == [0.05, 0.01, 0.001]
    for p in found.points:
        far = (ref_imp <= p.threshold).mean()
        assert far <= p.target_far and far == pytest.approx(p.far)
        # the next impostor distance above the threshold would break the target
        above = ref_imp[ref_imp > p.threshold]
        assert (ref_imp <= above[0]).mean() > p.target_far
        assert p.tar == pytest.approx((ref_gen <= p.threshold).mean())
    # a lower FAR never gives a higher threshold or TAR
    assert found.points[0].threshold >= found.points[1].threshold >= found.points[2].threshold
    assert found.points[0].tar >= found.points[2].tar
    assert found.genuine_pairs == len(ref_gen) and found.impostor_pairs == len(ref_imp)


def test_ties_never_push_the_far_over_the_target() -> None:
    impostor = np.array([0.1, 0.2, 0.2, 0.2, 0.5] + [0.9] * 95, dtype=np.float32)
    genuine = np.array([0.05, 0.15, 0.2, 0.3], dtype=np.float32)
    (point,) = operating_points(genuine, np.sort(impostor), impostor.size, fars=(0.03,))
    # 3 impostors allowed, but the 2nd..4th are tied at 0.2: only the one at 0.1 fits under the target.
    assert point.far == pytest.approx(0.01) and 0.1 <= point.threshold < 0.2 and point.tar == pytest.approx(0.5)


def test_no_genuine_pairs_is_a_clear_error() -> None:
    with pytest.raises(ReidError, match="genuine"):
        operating_points(np.zeros(0, np.float32), np.array([0.3], np.float32), 10)
    with pytest.raises(ReidError, match="strictly between"):
        operating_points(np.array([0.1], np.float32), np.array([0.3], np.float32), 10, fars=(1.5,))


def test_same_identity_uses_the_measured_distance(tmp_path: Path) -> None:
    a = np.array([1.0, 0.0, 0.0])
    b = np.array([0.8, 0.6, 0.0])  # cosine 0.8 -> cosine distance 0.2; squared euclidean on unit vectors 0.4
    assert same_identity(a, b, 0.25) is True and same_identity(a, b, 0.15) is False
    batch = same_identity(np.stack([a, a]), np.stack([b, -a]), 0.25)
    assert batch.tolist() == [True, False]
    found = Thresholds(distance="euclidean", normalize=True, genuine_pairs=10, impostor_pairs=100, cross_camera=True,
                       points=[OperatingPoint(0.01, 0.5, 0.01, 0.9), OperatingPoint(0.001, 0.3, 0.001, 0.7)])
    path = found.save(tmp_path / "threshold.json")
    assert same_identity(a, 3 * b, path, far=0.01) is True   # 0.4 <= 0.5 (normalised first)
    assert same_identity(a, 3 * b, path, far=0.001) is False  # 0.4 > 0.3
    import reid

    assert reid.same_identity(a, b, path, far=0.01) is True
    with pytest.raises(ReidError, match="no threshold at FAR 0.1"):
        same_identity(a, b, path, far=0.1)
    (tmp_path / "bad.json").write_text('{"mAP": 0.5}')
    with pytest.raises(ReidError, match="no reid threshold"):
        load_thresholds(tmp_path / "bad.json")
    with pytest.raises(ReidError, match="does not exist"):
        load_thresholds(tmp_path / "absent.json")


@pytest.mark.slow
def test_evaluate_writes_and_logs_the_threshold_and_search_uses_it(tmp_path: Path, tiny_config, synthetic_manifest) -> None:
    import yaml
    from mlflow.tracking import MlflowClient
    from typer.testing import CliRunner

    from deploy_models import save_trained, train_steps
    from reid.cli import app
    from reid.data.manifest import write_manifest

    manifest_path = Path(tiny_config.data.manifest)
    write_manifest(synthetic_manifest, manifest_path)
    ckpt = save_trained(train_steps(tiny_config, synthetic_manifest), tiny_config, synthetic_manifest, "last.pt")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_config.model_dump(mode="json")))
    out = tmp_path / "eval"
    res = CliRunner().invoke(app, ["evaluate", str(ckpt), "--params", str(params), "--output", str(out)])
    assert res.exit_code == 0, res.output
    assert "same-identity thresholds" in res.output
    metrics = json.loads((out / "metrics.json").read_text())
    found = load_thresholds(out / "threshold.json")
    point = found.at(1e-3)
    assert metrics["threshold"]["far_0.001"]["threshold"] == point.threshold
    assert found.model["weights_hash"] and found.measured_on
    client = MlflowClient(tracking_uri=tiny_config.tracking.uri)
    exp = client.get_experiment_by_name(tiny_config.tracking.experiment)
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.metrics["eval/threshold/far_0.001"] == pytest.approx(point.threshold)
    assert run.data.metrics["eval/tar/far_0.01"] == pytest.approx(found.at(1e-2).tar)

    # reid search reads it, and refuses a threshold measured on another model.
    gal = tmp_path / "gallery.npz"
    res = CliRunner().invoke(app, ["extract", "--split", "gallery", "--manifest", str(manifest_path), "--model", str(ckpt),
                                   "--output", str(gal), "--device", "cpu", "--params", str(tmp_path / "absent.yaml")])
    assert res.exit_code == 0, res.output
    query = synthetic_manifest.query[0].path
    js = tmp_path / "found.json"
    res = CliRunner().invoke(app, ["search", query, "--gallery", str(gal), "--threshold-file", str(out / "threshold.json"),
                                   "--far", "0.01", "--json", str(js), "--output", str(tmp_path / "s.png"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    t = found.at(1e-2).threshold
    assert f"threshold {t:.4f} (cosine distance) at FAR 0.01" in res.output
    for hit in json.loads(js.read_text())["queries"][0]["results"]:
        assert hit["same"] == (hit["distance"] <= t)
    # A threshold on the squared Euclidean distance of unit vectors is the same cut at twice the value.
    euclid = json.loads((out / "threshold.json").read_text())
    euclid["distance"] = "euclidean"
    for point in euclid["points"]:
        point["threshold"] *= 2
    (tmp_path / "euclid.json").write_text(json.dumps(euclid))
    res = CliRunner().invoke(app, ["search", query, "--gallery", str(gal), "--threshold-file", str(tmp_path / "euclid.json"),
                                   "--far", "0.01", "--output", str(tmp_path / "s.png"), "--device", "cpu"])
    assert res.exit_code == 0 and f"threshold {t:.4f} (cosine distance)" in res.output
    forged = json.loads((out / "threshold.json").read_text())
    forged["model"]["weights_hash"] = "0" * 16
    (tmp_path / "other.json").write_text(json.dumps(forged))
    res = CliRunner().invoke(app, ["search", query, "--gallery", str(gal), "--threshold-file", str(tmp_path / "other.json"),
                                   "--output", str(tmp_path / "s.png"), "--device", "cpu"])
    assert res.exit_code == 2 and "another model" in res.output


def test_naming_the_model_of_a_threshold_leaves_a_training_model_in_training_mode() -> None:
    """The training's validation threshold names last.pt by its export's weights hash; taking it must not
    switch the model being trained (BatchNorm would stop updating its statistics) to eval mode."""
    from reid.models.inference import InferenceModule, model_identity, weights_hash
    from reid.config import Config
    from reid.models.reid_model import build_model

    model = build_model(Config.model_validate({"model": {"backbone": "resnet18", "pretrained": "none"}}), 5).train()
    identity = model_identity(model, "resnet18")
    assert all(m.training for m in model.modules())
    assert identity == {"weights_hash": weights_hash(InferenceModule(model)), "backbone": "resnet18"}
