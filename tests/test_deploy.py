"""Using a trained model: export + parity, the embedder API, extract/search round trip (and search on a
prepared folder dataset, marking right and wrong hits), registry, bad input.

The models are trained for two steps on eight synthetic training images (64 x 32 input) and saved as
``reid train`` checkpoints, once per module: a plain ResNet18 (with a run in a test MLflow store, for
the registry test) and a ResNet50-IBN-a (its InstanceNorm must export in eval mode). The full trainer
is not used: its end-of-run evaluation would double the time on a shared 2-core CPU. The search on
folder data embeds with an untrained checkpoint: marking hits right or wrong needs identities, not a
good model.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from reid.deploy.contract import ContractError  # noqa: E402
from reid.deploy.embedder import load_model  # noqa: E402
from reid.deploy.export import ParityError, export_checkpoint, export_module, parity_check  # noqa: E402
from reid.errors import ReidError  # noqa: E402

from conftest import app, good_layout, prepare_folder, random_checkpoint, runner  # noqa: E402
from deploy_models import deploy_config, save_trained, train_steps  # noqa: E402  (tests/ is on sys.path under pytest)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path, synthetic_manifest) -> Path:
    from reid.data.manifest import write_manifest

    out = tmp_path_factory.mktemp("deploy")
    write_manifest(synthetic_manifest, out / "manifest.json")
    return out


@pytest.fixture(scope="module")
def trained(workdir: Path, synthetic_root: Path, synthetic_manifest):
    """``backbone -> (last.pt, config)``, each made once; resnet18's run is in the test MLflow store."""
    from mlflow.tracking import MlflowClient

    from reid.tracking import Tracker

    done: dict[str, tuple[Path, object]] = {}

    def get(backbone: str):
        if backbone not in done:
            config = deploy_config(synthetic_root, workdir, backbone, tracked=backbone == "resnet18")
            run_id = None
            if config.tracking.enabled:
                tracker = Tracker(config.tracking)
                client = MlflowClient(tracking_uri=tracker.uri)
                run = client.create_run(tracker.experiment_id(), run_name=f"train-{backbone}")
                client.set_terminated(run.info.run_id)
                run_id = run.info.run_id
            model = train_steps(config, synthetic_manifest)
            path = save_trained(model, config, synthetic_manifest, "last.pt", run_id)
            done[backbone] = (path, config)
        return done[backbone]

    return get


# -- export and parity -------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["resnet18", "resnet50_ibn_a"])
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_passes_the_parity_check(trained, workdir: Path, backbone: str, fmt: str) -> None:
    ckpt, config = trained(backbone)
    out = workdir / "export" / f"{backbone}.{'onnx' if fmt == 'onnx' else 'ts'}"
    path, meta, report, report_file = export_checkpoint(ckpt, fmt, out, num_images=6)  # type: ignore[arg-type]
    assert report.passed and report.min_cosine >= 0.9999 and report.num_images == 6
    saved = json.loads(report_file.read_text())
    assert saved["passed"] is True and saved["metadata"]["backbone"] == backbone
    # The contract travels in the file and is read back by the embedder.
    exported = load_model(path, device="cpu")
    assert exported.input_size == (64, 32) and exported.metadata["channel_order"] == "RGB"
    assert json.loads(exported.metadata["mean"]) == list(config.data.mean)
    assert exported.metadata["output_l2_normalized"] == "false"
    assert exported.embedding_dim == (512 if backbone == "resnet18" else 2048)
    # Inference graph only: no classifier weights, and any batch size.
    if fmt == "onnx":
        import onnx

        proto = onnx.load(str(path))
        assert not any("classifier" in init.name for init in proto.graph.initializer)
        assert isinstance(exported.session.get_inputs()[0].shape[0], str)  # symbolic batch axis
    else:
        assert not any(k.startswith("classifier") for k in exported.module.state_dict())
    images = [torch.randint(0, 256, (3, 70, 30), dtype=torch.uint8) for _ in range(3)]
    assert exported.embed(images).shape == (3, exported.embedding_dim)


class _NormalisedTwice(nn.Module):
    """The classic export bug: the graph normalises again what the caller already normalised."""

    def __init__(self, inner: nn.Module, mean, std) -> None:
        super().__init__()
        self.inner = inner
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner((x - self.mean) / self.std)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_corrupted_export_fails_the_parity_check(trained, workdir: Path, synthetic_manifest, fmt: str) -> None:
    from reid.deploy.embedder import TorchEmbedder
    from reid.deploy.module import load_checkpoint_module

    ckpt, config = trained("resnet18")
    _, module, _, meta = load_checkpoint_module(ckpt)
    bad = export_module(_NormalisedTwice(module, config.data.mean, config.data.std), fmt,  # type: ignore[arg-type]
                        workdir / "bad" / f"bad.{'onnx' if fmt == 'onnx' else 'ts'}", meta, (64, 32))
    reference = TorchEmbedder(ckpt, module, meta, torch.device("cpu"), False, kind="pytorch")
    report = parity_check(reference, load_model(bad, device="cpu"), [s.path for s in synthetic_manifest.query[:8]])
    assert not report.passed and report.min_cosine < 0.9999


@pytest.mark.slow
def test_export_command_prints_the_contract_and_fails_loudly(trained, workdir: Path) -> None:
    from typer.testing import CliRunner

    from reid.cli import app

    ckpt, _ = trained("resnet18")
    out = workdir / "cli" / "model.onnx"
    ok = CliRunner().invoke(app, ["export", str(ckpt), "--format", "onnx", "--output", str(out), "--num-images", "6",
                                  "--params", str(workdir / "absent.yaml")])
    assert ok.exit_code == 0, ok.output
    assert "input_height: 64" in ok.output and "channel_order: RGB" in ok.output and "parity passed" in ok.output
    # Tracking is on by default, so not logging is said, with the reason, in one line.
    assert f"MLflow: not logged or registered: no parameter file {workdir / 'absent.yaml'}" in ok.stderr
    # A tolerance no export can meet: non-zero exit, the numbers, and the report says failed.
    bad = CliRunner().invoke(app, ["export", str(ckpt), "--format", "onnx", "--output", str(out), "--num-images", "6",
                                   "--tolerance", "1.5", "--params", str(workdir / "absent.yaml")])
    assert bad.exit_code == 2 and "parity FAILED" in bad.output and "Traceback" not in bad.output
    assert json.loads((out.parent / "model.parity.json").read_text())["passed"] is False


# -- the Python API ----------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("flip", [False, True])
def test_embed_equals_the_evaluation_features(trained, synthetic_manifest, flip: bool) -> None:
    from PIL import Image

    from reid import load_model as api_load_model
    from reid.data.images import decode_image
    from reid.data.loaders import build_test_loader
    from reid.evaluation.features import extract_features
    from reid.models.inference import load_inference_model

    ckpt, config = trained("resnet18")
    query = synthetic_manifest.query
    model, _ = load_inference_model(ckpt, "cpu")
    expected = extract_features(model, build_test_loader(query, config, "cpu"), "cpu", flip=flip)
    embedder = api_load_model(ckpt, device="cpu", flip=flip)
    assert embedder.device == torch.device("cpu") and embedder.input_size == (64, 32)
    got = embedder.embed([s.path for s in query], normalize=False)
    torch.testing.assert_close(torch.from_numpy(got), expected, rtol=1e-4, atol=1e-5)
    # Other image forms give the same features as the paths.
    chw = decode_image(query[0].path)
    forms = [Image.open(query[0].path), chw.permute(1, 2, 0).numpy(), chw, chw.numpy()]
    for form in forms:
        torch.testing.assert_close(torch.from_numpy(embedder.embed(form, normalize=False))[0], expected[0],
                                   rtol=1e-4, atol=1e-5)
    unit = embedder.embed([query[0].path])  # default: normalised as configured (cosine)
    assert np.linalg.norm(unit[0]) == pytest.approx(1.0, abs=1e-5)


def test_import_reid_stays_cheap() -> None:
    code = "import sys, reid; assert callable(reid.load_model); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- extract + search --------------------------------------------------------------------------------
def test_topk_search_is_exact_and_chunking_changes_nothing() -> None:
    from reid.deploy.gallery import topk_search

    rng = np.random.default_rng(0)
    gallery = rng.integers(-3, 4, (257, 6)).astype(np.float32)  # integer features: exact distances, real ties
    queries = rng.integers(-3, 4, (9, 6)).astype(np.float32)
    full = ((queries[:, None, :] - gallery[None, :, :]) ** 2).sum(-1)
    expected = np.argsort(full, axis=1, kind="stable")[:, :7]
    for chunk in (1, 5, 64, 10_000):
        dist, idx = topk_search(queries, gallery, 7, cosine=False, chunk_size=chunk)
        np.testing.assert_array_equal(idx, expected)
        np.testing.assert_array_equal(dist, np.take_along_axis(full, expected, 1))
    assert topk_search(queries, gallery[:3], 7, cosine=False)[1].shape == (9, 3)


@pytest.mark.slow
def test_extract_and_search_round_trip_matches_the_evaluation(trained, workdir: Path, synthetic_manifest) -> None:
    from typer.testing import CliRunner

    from reid.cli import app
    from reid.data.loaders import build_test_loader
    from reid.deploy.gallery import load_features
    from reid.evaluation.distance import distance_producer
    from reid.evaluation.features import extract_features
    from reid.evaluation.metrics import ranked_lists
    from reid.models.inference import load_inference_model

    ckpt, config = trained("resnet18")
    query, gallery = synthetic_manifest.query, synthetic_manifest.gallery
    gal = workdir / "rt" / "gallery.npz"
    res = CliRunner().invoke(app, ["extract", "--split", "gallery", "--manifest", str(workdir / "manifest.json"),
                                   "--model", str(ckpt), "--output", str(gal), "--device", "cpu",
                                   "--params", str(workdir / "absent.yaml")])
    assert res.exit_code == 0, res.output
    assert "img/s" in res.output  # the throughput line
    ff = load_features(gal)
    assert ff.features.dtype == np.float32 and ff.features.shape[0] == len(gallery) and ff.normalized
    assert list(ff.pids) == [s.pid for s in gallery] and list(ff.camids) == [s.camid for s in gallery]

    listing = workdir / "rt" / "queries.txt"
    listing.write_text("\n".join(s.path for s in query) + "\n")
    results = workdir / "rt" / "results.json"
    picture = workdir / "rt" / "search.png"
    res = CliRunner().invoke(app, ["search", str(listing), "--gallery", str(gal), "--top-k", "5", "--json",
                                   str(results), "--output", str(picture), "--chunk-size", "7", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert picture.is_file() and str(picture) in res.output
    found = json.loads(results.read_text())["queries"]

    # The evaluation's ranking of the same images (no junk removal: search does not know cameras).
    model, _ = load_inference_model(ckpt, "cpu")
    qf = extract_features(model, build_test_loader(query, config, "cpu"), "cpu")
    gf = extract_features(model, build_test_loader(gallery, config, "cpu"), "cpu")
    produce = distance_producer(qf, gf, config.eval.distance, config.eval.normalize)
    lists = ranked_lists(produce, range(len(query)), [s.pid for s in query], [s.pid for s in gallery],
                         [s.camid for s in query], [s.camid for s in gallery], size=2, cross_camera=False)
    for i, row in enumerate(found):
        assert row["query"] == query[i].path
        top = row["results"][0]["index"]
        expected = int(lists.gallery_index[i, 0])
        if top != expected:  # only a tie may order differently
            d = produce(i, i + 1)[0]
            assert float(d[top]) == pytest.approx(float(d[expected]), abs=1e-6), (i, top, expected)

    # The ONNX export extracts the same gallery (up to float error) and can search it.
    onnx_file, *_ = export_checkpoint(ckpt, "onnx", workdir / "rt" / "model.onnx", num_images=4)
    gal2 = workdir / "rt" / "gallery_onnx.npz"
    res = CliRunner().invoke(app, ["extract", "--split", "gallery", "--manifest", str(workdir / "manifest.json"),
                                   "--model", str(onnx_file), "--output", str(gal2), "--params", str(workdir / "absent.yaml")])
    assert res.exit_code == 0, res.output
    cos = (load_features(gal2).features * ff.features).sum(1)
    assert cos.min() >= 0.9999
    res = CliRunner().invoke(app, ["search", query[0].path, "--gallery", str(gal), "--model", str(onnx_file),
                                   "--threshold", "0.5", "--output", str(picture), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "same" in res.output or "different" in res.output


def test_search_marks_right_and_wrong_hits_on_folder_data(tmp_path: Path, tiny_config) -> None:
    result, root = prepare_folder(tmp_path, good_layout())
    assert result.exit_code == 0, result.output
    manifest = tmp_path / "m" / "manifest.json"
    model = random_checkpoint(tmp_path / "model" / "last.pt", tiny_config, 4)
    gallery = tmp_path / "g.npz"
    done = runner.invoke(app(), ["extract", "--model", str(model), "--split", "gallery", "--manifest", str(manifest),
                                 "--output", str(gallery), "--device", "cpu"])
    assert done.exit_code == 0, done.output
    found = runner.invoke(app(), ["search", str(root / "query"), "--gallery", str(gallery), "--top-k", "3",
                                  "--json", str(tmp_path / "r.json"), "--output", str(tmp_path / "s.png"),
                                  "--device", "cpu"])
    assert found.exit_code == 0, found.output
    assert "same identity" in found.stdout and "no identities" not in found.stdout
    rows = json.loads((tmp_path / "r.json").read_text())["queries"]
    assert sorted(row["pid"] for row in rows) == [1, 2, 3]
    assert all("same_identity" in hit and hit["pid"] > 0 for row in rows for hit in row["results"])
    # A folder extracted with the manifest at hand gets its identities too (not -1).
    loose = runner.invoke(app(), ["extract", str(root / "gallery"), "--model", str(model), "--manifest", str(manifest),
                                  "--output", str(tmp_path / "f.npz"), "--device", "cpu"])
    assert loose.exit_code == 0, loose.output
    from reid.deploy.gallery import load_features

    assert sorted(set(load_features(tmp_path / "f.npz").pids.tolist())) == [1, 2, 3]


# -- tracking ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_export_is_logged_to_the_training_run_and_registered(trained, workdir: Path) -> None:
    import yaml
    from mlflow.tracking import MlflowClient
    from typer.testing import CliRunner

    from reid.cli import app
    from reid.checkpoint import read_entry

    ckpt, config = trained("resnet18")
    run_id = read_entry(ckpt, "mlflow_run_id")
    assert run_id, "the tracked fixture run must record its MLflow run"
    params = workdir / "params.yaml"
    params.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    out = workdir / "reg" / "model.onnx"
    for _ in range(2):
        res = CliRunner().invoke(app, ["export", str(ckpt), "--output", str(out), "--num-images", "4",
                                       "--params", str(params), "--name", "baseline"])
        assert res.exit_code == 0, res.output
    client = MlflowClient(tracking_uri=config.tracking.uri, registry_uri=config.tracking.uri)
    logged = {f.path for f in client.list_artifacts(run_id, "export")}
    assert {"export/model.onnx", "export/model.parity.json"} <= logged
    versions = client.search_model_versions("name='deploy-tests-baseline'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    run = client.get_run(run_id)
    assert run.data.metrics["export/min_cosine"] >= 0.9999
    # Each export is an MLflow model of the run (the runs table's Models column), and each registry
    # version is made from one of them: version -> logged model -> run.
    model_ids = [o.model_id for o in run.outputs.model_outputs]
    assert len(model_ids) == 2, model_ids
    assert sorted(v.source for v in versions) == sorted(f"models:/{m}" for m in model_ids)
    assert all(v.run_id == run_id for v in versions)
    import mlflow.onnx
    from mlflow.models import Model

    logged_model = client.get_logged_model(model_ids[0])
    assert logged_model.source_run_id == run_id and logged_model.experiment_id == run.info.experiment_id
    linked = json.loads(logged_model.tags["mlflow.modelVersions"])  # what the UI follows to the registry
    assert [(v["name"], str(v["version"])) for v in linked] in ([("deploy-tests-baseline", "1")],
                                                               [("deploy-tests-baseline", "2")])
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    from reid.deploy.contract import INPUT_NAME, OUTPUT_NAME

    with _use_tracking_uri(config.tracking.uri):  # models:/ URIs resolve through the process's store
        mlmodel = Model.load(f"models:/{model_ids[0]}")
        graph = mlflow.onnx.load_model(f"models:/{model_ids[0]}")  # the graph itself, no pickle involved
    assert "onnx" in mlmodel.flavors
    inputs, outputs = mlmodel.signature.inputs.to_dict(), mlmodel.signature.outputs.to_dict()
    h, w = config.data.height, config.data.width
    assert inputs[0]["name"] == INPUT_NAME and list(inputs[0]["tensor-spec"]["shape"]) == [-1, 3, h, w]
    assert outputs[0]["name"] == OUTPUT_NAME and outputs[0]["tensor-spec"]["dtype"] == "float32"
    contract = mlmodel.metadata["reid_contract"]
    assert contract["input_height"] == str(h) and contract["mean"] and contract["backbone"] == "resnet18"
    assert [i.name for i in graph.graph.input] == [INPUT_NAME]


# -- bad input ---------------------------------------------------------------------------------------
def test_not_a_reid_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from reid.cli import app

    bogus = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.zeros(1)}, bogus)
    with pytest.raises(ReidError, match="not a reid checkpoint"):
        load_model(bogus, device="cpu")
    res = CliRunner().invoke(app, ["export", str(bogus), "--output", str(tmp_path / "m.onnx"),
                                   "--params", str(tmp_path / "absent.yaml")])
    assert res.exit_code == 2 and str(bogus) in res.output and "Traceback" not in res.output


def test_onnx_without_our_metadata_is_refused(tmp_path: Path) -> None:
    plain = tmp_path / "plain.onnx"
    torch.onnx.export(nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval(),
                      (torch.zeros(1, 3, 8, 8),), str(plain), dynamo=False)
    with pytest.raises(ContractError, match="no reid metadata") as err:
        load_model(plain, device="cpu")
    assert str(plain) in str(err.value) and "reid export" in str(err.value)


def test_folder_without_images_is_a_clear_error(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from reid.cli import app
    from reid.deploy.inputs import collect_images

    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "notes.txt.bak").write_text("not an image")
    with pytest.raises(ReidError, match="no images") as err:
        collect_images([empty])
    assert str(empty) in str(err.value)
    res = CliRunner().invoke(app, ["extract", str(empty), "--model", str(tmp_path / "m.onnx"),
                                   "--params", str(tmp_path / "absent.yaml")])
    assert res.exit_code == 2 and "no images" in res.output


@pytest.mark.slow
def test_gallery_of_another_model_is_refused(trained, workdir: Path, synthetic_manifest) -> None:
    from typer.testing import CliRunner

    from reid.cli import app
    from reid.deploy.gallery import FeatureFile, load_features, save_features

    ckpt, _ = trained("resnet18")
    other, _ = trained("resnet50_ibn_a")
    gal = workdir / "other" / "gallery.npz"
    images = [s.path for s in synthetic_manifest.gallery[:6]]
    res = CliRunner().invoke(app, ["extract", *images, "--model", str(ckpt), "--output", str(gal),
                                   "--params", str(workdir / "absent.yaml")])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["search", images[0], "--gallery", str(gal), "--model", str(other),
                                   "--output", str(workdir / "other" / "s.png")])
    assert res.exit_code == 2 and "another model" in res.output and "embedding_dim" in res.output
    # Same architecture, other weights: the weights hash tells them apart.
    ff = load_features(gal)
    ff.metadata["weights_hash"] = "0" * 16
    save_features(gal, FeatureFile(ff.paths, ff.features, ff.pids, ff.camids, ff.normalized, ff.metadata))
    res = CliRunner().invoke(app, ["search", images[0], "--gallery", str(gal), "--model", str(ckpt),
                                   "--output", str(workdir / "other" / "s.png")])
    assert res.exit_code == 2 and "weights_hash" in res.output and str(gal) in res.output


@pytest.mark.slow
def test_unwritable_outputs_and_corrupt_images(trained, workdir: Path, synthetic_manifest) -> None:
    from typer.testing import CliRunner

    from reid.cli import app
    from reid.deploy.gallery import load_features

    ckpt, _ = trained("resnet18")
    blocker = workdir / "a-file"
    blocker.write_text("x")
    with pytest.raises(ReidError, match="cannot write") as err:
        export_checkpoint(ckpt, "onnx", blocker / "model.onnx")
    assert str(blocker / "model.onnx") in str(err.value)
    images = [s.path for s in synthetic_manifest.query[:3]]
    res = CliRunner().invoke(app, ["extract", *images, "--model", str(ckpt), "--output", str(blocker / "g.npz"),
                                   "--params", str(workdir / "absent.yaml")])
    assert res.exit_code == 2 and "cannot write" in res.output

    broken = workdir / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    out = workdir / "skip.npz"
    res = CliRunner().invoke(app, ["extract", *images, str(broken), "--model", str(ckpt), "--output", str(out),
                                   "--params", str(workdir / "absent.yaml")])
    assert res.exit_code == 2 and str(broken) in res.output
    res = CliRunner().invoke(app, ["extract", *images, str(broken), "--model", str(ckpt), "--output", str(out),
                                   "--corrupt-images", "skip", "--params", str(workdir / "absent.yaml")])
    assert res.exit_code == 0, res.output
    assert load_features(out).paths == images


def test_two_exports_creating_one_registered_model_at_once_both_register(tmp_path: Path) -> None:
    """The jobs of a sweep export models of one name at once: the export that loses the race to create the
    registered model (RESOURCE_ALREADY_EXISTS) adds its version like the winner, it does not fail."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from reid.deploy.registry import _ensure_registered_model

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")

    class RacingClient:
        """Says the model is missing, as it was when the other job looked, while the other job creates it."""

        def get_registered_model(self, name):
            raise MlflowException("not found", error_code="RESOURCE_DOES_NOT_EXIST")

        def create_registered_model(self, name, description=None):
            return client.create_registered_model(name, description=description)

    racing = RacingClient()
    _ensure_registered_model(racing, "sweep-baseline", "first")
    _ensure_registered_model(racing, "sweep-baseline", "second")  # the loser of the race: no error
    assert client.get_registered_model("sweep-baseline").description == "first"

    class BrokenStore(RacingClient):
        def create_registered_model(self, name, description=None):
            raise MlflowException("database is locked", error_code="INTERNAL_ERROR")

    with pytest.raises(MlflowException, match="database is locked"):  # any other failure still raises
        _ensure_registered_model(BrokenStore(), "sweep-other", "x")
