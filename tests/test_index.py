"""The FAISS gallery index: build (exact and approximate), add without a rebuild, search, refusals, corrupt files.

Unit tests use clustered random unit vectors (identities = clusters); the command test extracts a synthetic
gallery with a briefly trained ResNet-18 (``tests/deploy_models.py``) and checks that ``reid search --index``
over an exact index answers what ``reid search --gallery`` answers, and that another model is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

faiss = pytest.importorskip("faiss", reason="FAISS is not installed: pip install -e '.[deploy]'")

from reid.deploy.contract import ContractError  # noqa: E402
from reid.deploy.index import IndexFileError, IndexSettings, build_index, contract_hash, load_index  # noqa: E402
from reid.errors import ReidError  # noqa: E402

META = {"format": "reid-export-v1", "embedding_dim": "32", "backbone": "resnet18", "input_height": "64",
        "input_width": "32", "mean": "[0.485, 0.456, 0.406]", "std": "[0.229, 0.224, 0.225]", "data_hash": "d1",
        "weights_hash": "w1"}


def _clustered(n: int, dim: int = 32, ids: int = 50, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((ids, dim))
    pids = rng.integers(0, ids, n)
    x = centres[pids] + 0.6 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), pids


def _exact(q: np.ndarray, g: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    d = 1.0 - q.astype(np.float64) @ g.T.astype(np.float64)
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, idx, 1), idx


def _build(x: np.ndarray, pids: np.ndarray, **settings) -> object:
    return build_index(x, [f"g{i}.jpg" for i in range(len(x))], pids, np.ones(len(x), int), True, META,
                       IndexSettings(**settings))


def test_flat_index_is_exact() -> None:
    g, pids = _clustered(3000)
    q, _ = _clustered(40, seed=1)
    index = _build(g, pids, kind="flat")
    dist, idx = index.search(q, 10)
    ref_d, ref_i = _exact(q, g, 10)
    assert np.allclose(dist, ref_d, atol=1e-5)
    # same neighbours, up to ties within float error
    assert (idx == ref_i).mean() > 0.99
    assert index.settings["kind"] == "flat"


@pytest.mark.parametrize("kind, recall", [("hnsw", 0.95), ("ivf", 0.95), ("ivf-sq8", 0.9), ("ivf-pq", 0.5)])
def test_approximate_indexes_find_the_exact_neighbours(kind: str, recall: float) -> None:
    g, pids = _clustered(6000)
    q, _ = _clustered(100, seed=1)
    index = _build(g, pids, kind=kind, nprobe=16, pq_m=8)
    assert index.settings["kind"] == kind
    _, idx = index.search(q, 10)
    _, ref = _exact(q, g, 10)
    found = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(idx, ref)])
    assert found >= recall, f"{kind} recall@10 {found:.3f}"


def test_auto_is_exact_for_small_galleries_and_hnsw_past_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    import reid.deploy.index as index_module

    g, pids = _clustered(2000)
    assert _build(g, pids).settings["kind"] == "flat"
    monkeypatch.setattr(index_module, "AUTO_EXACT_LIMIT", 1000)
    assert _build(g, pids).settings["kind"] == "hnsw"
    chosen = _build(g, pids, kind="ivf").settings
    assert 1 <= chosen["nlist"] <= 2000 // 39


def test_save_load_add_round_trip(tmp_path: Path) -> None:
    g, pids = _clustered(2500)
    index = _build(g[:2000], pids[:2000], kind="ivf", nprobe=8)
    path = index.save(tmp_path / "gallery.index")
    loaded = load_index(path)
    assert loaded.size == 2000
    assert loaded.metadata["contract_hash"] == contract_hash(META)
    q, _ = _clustered(20, seed=1)
    assert np.array_equal(loaded.search(q, 5)[1], index.search(q, 5)[1])
    # Append 500 more without retraining: they are found, under their own paths and labels.
    loaded.add(g[2000:], [f"new{i}.jpg" for i in range(500)], pids[2000:], np.full(500, 7), True, META, "new.npz")
    loaded.save(path)
    again = load_index(path)
    assert again.size == 2500 and again.paths[2000] == "new0.jpg" and again.camids[-1] == 7
    dist, idx = again.search(g[2100:2101], 1)
    assert idx[0, 0] == 2100 and dist[0, 0] == pytest.approx(0.0, abs=1e-4)
    assert again.settings["nprobe"] == 8  # the search settings travel with the file


def test_another_models_features_are_refused(tmp_path: Path) -> None:
    g, pids = _clustered(500)
    index = _build(g, pids, kind="flat")
    other = {**META, "weights_hash": "w2"}
    with pytest.raises(ContractError, match="weights_hash"):
        index.check_model(other, "other.onnx")
    with pytest.raises(ContractError, match="another model"):
        index.add(g[:3], ["a", "b", "c"], pids[:3], [1, 1, 1], True, other, "other.npz")
    assert index.size == 500  # nothing was added
    with pytest.raises(IndexFileError, match="dimension"):
        index.search(np.zeros((1, 16), np.float32), 3)


def test_corrupt_or_edited_index_files_are_clear_errors(tmp_path: Path) -> None:
    g, pids = _clustered(500)
    path = _build(g, pids, kind="hnsw").save(tmp_path / "gallery.index")
    data = path.read_bytes()
    truncated = tmp_path / "truncated.index"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexFileError, match="corrupt") as info:
        load_index(truncated)
    assert "reid index build" in str(info.value)
    # A flipped byte inside the FAISS blob: the zip's CRC catches it.
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0xFF
    (tmp_path / "flipped.index").write_bytes(bytes(flipped))
    with pytest.raises(IndexFileError):
        load_index(tmp_path / "flipped.index")
    # A contract edited by hand no longer matches its hash.
    with np.load(path, allow_pickle=False) as z:
        parts = {k: z[k] for k in z.files}
    meta = json.loads(str(parts["metadata"]))
    meta["contract"]["weights_hash"] = "forged"
    parts["metadata"] = np.asarray(json.dumps(meta))
    with open(tmp_path / "edited.index", "wb") as fh:
        np.savez(fh, **parts)
    with pytest.raises(IndexFileError, match="edited"):
        load_index(tmp_path / "edited.index")
    with pytest.raises(IndexFileError, match="does not exist"):
        load_index(tmp_path / "absent.index")
    np.savez(tmp_path / "features.npz", features=g)
    with pytest.raises(IndexFileError, match="not a `reid index` file"):
        load_index(tmp_path / "features.npz")


def test_a_failed_write_keeps_the_previous_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    g, pids = _clustered(300)
    index = _build(g, pids, kind="flat")
    path = index.save(tmp_path / "gallery.index")
    before = path.read_bytes()
    index.add(g[:10], [f"x{i}" for i in range(10)], pids[:10], np.ones(10, int), True, META, "x.npz")

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(KeyboardInterrupt):
        index.save(path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["gallery.index"]


def test_bad_settings_are_clear_errors() -> None:
    g, pids = _clustered(300)
    with pytest.raises(ReidError, match="not an index kind"):
        _build(g, pids, kind="annoy")
    with pytest.raises(ReidError, match="must divide"):
        _build(g, pids, kind="ivf-pq", pq_m=5)
    with pytest.raises(ReidError, match="no features"):
        build_index(np.zeros((0, 32), np.float32), [], [], [], True, META)


# -- the commands ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def extracted(tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path, synthetic_manifest):
    """``(checkpoint, manifest, gallery.npz, workdir)`` of a briefly trained ResNet-18 on synthetic data."""
    from typer.testing import CliRunner

    from deploy_models import deploy_config, save_trained, train_steps
    from reid.cli import app
    from reid.data.manifest import write_manifest

    out = tmp_path_factory.mktemp("index")
    write_manifest(synthetic_manifest, out / "manifest.json")
    config = deploy_config(synthetic_root, out, "resnet18", tracked=False)
    ckpt = save_trained(train_steps(config, synthetic_manifest), config, synthetic_manifest, "last.pt")
    gal = out / "gallery.npz"
    res = CliRunner().invoke(app, ["extract", "--split", "gallery", "--manifest", str(out / "manifest.json"), "--model",
                                   str(ckpt), "--output", str(gal), "--device", "cpu", "--params", str(out / "absent.yaml")])
    assert res.exit_code == 0, res.output
    return ckpt, out / "manifest.json", gal, out


def test_index_commands_build_add_and_search_like_the_exact_scan(extracted) -> None:
    from typer.testing import CliRunner

    from reid.cli import app
    from reid.deploy.gallery import FeatureFile, load_features, save_features

    ckpt, manifest, gal, out = extracted
    ff = load_features(gal)
    half = len(ff.paths) // 2
    first, second = out / "first.npz", out / "second.npz"
    for path, rows in ((first, slice(0, half)), (second, slice(half, None))):
        save_features(path, FeatureFile(ff.paths[rows], ff.features[rows], ff.pids[rows], ff.camids[rows], ff.normalized,
                                        ff.metadata))
    idx_file = out / "gallery.index"
    run = CliRunner().invoke
    res = run(app, ["index", "build", str(first), "--output", str(idx_file)])
    assert res.exit_code == 0, res.output
    assert "flat index (exact)" in res.output and f"{half} x 512" in res.output
    res = run(app, ["index", "add", str(idx_file), str(second)])
    assert res.exit_code == 0, res.output
    assert f"added {len(ff.paths) - half} vectors" in res.output
    from reid.data.manifest import load_manifest

    queries = [s.path for s in load_manifest(manifest).query[:5]]
    listing = out / "queries.txt"
    listing.write_text("\n".join(queries) + "\n")
    answers = {}
    for flag, source in (("--gallery", gal), ("--index", idx_file)):
        js = out / f"{flag[2:]}.json"
        res = run(app, ["search", str(listing), flag, str(source), "--top-k", "5", "--json", str(js),
                        "--output", str(out / f"{flag[2:]}.png"), "--device", "cpu"])
        assert res.exit_code == 0, res.output
        answers[flag] = json.loads(js.read_text())["queries"]
    for a, b in zip(answers["--gallery"], answers["--index"]):
        assert [h["path"] for h in a["results"]] == [h["path"] for h in b["results"]]
        assert np.allclose([h["distance"] for h in a["results"]], [h["distance"] for h in b["results"]], atol=1e-5)
    res = run(app, ["index", "info", str(idx_file)])
    assert res.exit_code == 0 and f"{len(ff.paths)} x 512" in res.output


def test_search_refuses_another_models_queries_and_a_corrupt_index(extracted, synthetic_root: Path,
                                                                    synthetic_manifest) -> None:
    from typer.testing import CliRunner

    from deploy_models import deploy_config, save_trained, train_steps
    from reid.cli import app

    ckpt, manifest, gal, out = extracted
    idx_file = out / "refuse.index"
    run = CliRunner().invoke
    assert run(app, ["index", "build", str(gal), "--output", str(idx_file), "--kind", "hnsw"]).exit_code == 0
    other_cfg = deploy_config(synthetic_root, out / "other", "resnet18", tracked=False)
    other = save_trained(train_steps(other_cfg, synthetic_manifest, steps=3), other_cfg, synthetic_manifest, "last.pt")
    query = synthetic_manifest.query[0].path
    res = run(app, ["search", query, "--index", str(idx_file), "--model", str(other), "--output", str(out / "x.png"),
                    "--device", "cpu"])
    assert res.exit_code == 2 and "another model" in res.output and "weights_hash" in res.output
    broken = out / "broken.index"
    broken.write_bytes(idx_file.read_bytes()[:1000])
    res = run(app, ["search", query, "--index", str(broken), "--output", str(out / "x.png")])
    assert res.exit_code == 2 and "corrupt" in res.output
    res = run(app, ["search", query, "--output", str(out / "x.png")])
    assert res.exit_code == 2 and "--gallery" in res.output and "--index" in res.output
