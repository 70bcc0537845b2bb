"""What a new user met on third-party datasets (folder layout) and broken copies of them: each test
fails without its fix.

Resume hints that resume another run, corrupt test images found after the last epoch, resume refusing
changes that do not touch what was learned, evaluation-only cross-domain targets, and the rough edges
of data the toolkit had never seen (spaces in paths, camera tokens, units, identities in folder
names, unsupported extensions).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from reid.errors import CheckpointError, CorruptImageError
from test_user_errors import folder_dataset, good_layout, image

runner = CliRunner()


def app():
    from reid.cli import app as reid_app

    return reid_app


def write_params(path: Path, config, **extra: object) -> Path:
    """``config`` (a Config) as a params file, plus pipeline keys (variants, evaluate)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({**config.model_dump(mode="json"), **extra}))
    return path


def pasted(hint: str, marker: str) -> list[str]:
    """The command a user copies from ``hint`` after ``marker`` (to the end of the line, or between
    backticks), split as a POSIX shell splits it."""
    text = hint.split(marker, 1)[1].strip()
    text = text[1:].split("`", 1)[0] if text.startswith("`") else text.splitlines()[0]
    argv = shlex.split(text)
    assert argv[:2] == ["reid", "train"], argv
    return argv[1:]


# -- 1: the resume hint resumes the interrupted run ---------------------------------------------------------
def test_the_interrupt_hint_resumes_exactly_the_interrupted_run(tmp_path: Path, tiny_config, synthetic_manifest,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import reid.engine.trainer as trainer_module
    from reid.data.manifest import write_manifest
    from reid.checkpoint import save_checkpoint
    from reid.engine.signals import Terminated

    monkeypatch.chdir(tmp_path)
    write_manifest(synthetic_manifest, tiny_config.data.manifest)
    params = write_params(tmp_path / "my configs" / "p.yaml", tiny_config,
                          variants={"short": {"train": {"epochs": 1}}})
    calls: list[tuple] = []

    def fake_train(config, manifest, resume=False, **kwargs):
        calls.append((config, resume, kwargs.get("variant"), kwargs.get("run_name")))
        if not resume:  # the first epoch is done, then SIGTERM
            last = save_checkpoint({"epoch": 1}, Path(config.train.output_dir) / "last.pt")
            os.utime(last, (time.time() + 5, time.time() + 5))  # written during this run, whatever the clock's grain
            raise Terminated("received signal SIGTERM")
        raise CheckpointError("stop here: the resumed run's arguments are recorded")

    monkeypatch.setattr(trainer_module, "train", fake_train)
    out = tmp_path / "runs" / "my run"
    first = runner.invoke(app(), ["train", "--params", str(params), "--variant", "short", "-o",
                                  f"train.output_dir={out}", "-o", "optim.lr=0.001", "--run-name", "try 2"])
    assert first.exit_code == 143, first.output
    again = runner.invoke(app(), pasted(first.stderr, "Continue with:"))
    assert again.exit_code == 2 and len(calls) == 2, again.output
    (config, resumed, variant, run_name), (config2, resumed2, variant2, run_name2) = calls
    assert not resumed and resumed2 and (variant2, run_name2) == (variant, run_name) == ("short", "try 2")
    assert config2 == config and config2.train.output_dir == out and config2.optim.lr == 0.001


def test_the_evaluation_failure_hint_resumes_exactly_the_failed_run(tmp_path: Path, tiny_config, synthetic_manifest,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import reid.evaluation.runner as runner_module
    from reid.data.manifest import write_manifest
    from reid.errors import EvaluationError

    monkeypatch.chdir(tmp_path)
    write_manifest(synthetic_manifest, tiny_config.data.manifest)
    params = write_params(tmp_path / "p.yaml", tiny_config)
    evaluate = runner_module.evaluate_model

    def broken(*args, **kwargs):
        raise EvaluationError("evaluation broke")

    monkeypatch.setattr(runner_module, "evaluate_model", broken)
    out = tmp_path / "other run"
    failed = runner.invoke(app(), ["train", "--params", str(params), "-o", f"train.output_dir={out}",
                                   "-o", "train.epochs=1", "-o", "tracking.enabled=false", "--run-name", "x"])
    assert failed.exit_code == 2 and "evaluation broke" in failed.stderr, failed.output
    monkeypatch.setattr(runner_module, "evaluate_model", evaluate)  # the cause is fixed
    resumed = runner.invoke(app(), pasted(failed.stderr, "continue with"))
    assert resumed.exit_code == 0, resumed.output
    assert f"resuming from {out / 'last.pt'}: 1 epoch(s) done" in resumed.stderr
    assert not Path(tiny_config.train.output_dir).exists()  # the default folder was never touched


# -- 2: corrupt test images before the first step; resume accepts what does not change the learning --------
def with_corrupt_gallery_image(manifest, folder: Path):
    """``manifest`` with its first gallery image replaced by a truncated copy in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    broken = folder / Path(manifest.gallery[0].path).name
    broken.write_bytes(Path(manifest.gallery[0].path).read_bytes()[:200])
    gallery = [manifest.gallery[0].__class__(str(broken), manifest.gallery[0].pid, manifest.gallery[0].camid),
               *manifest.gallery[1:]]
    return manifest.model_copy(update={"gallery": gallery}), broken


def test_a_corrupt_test_image_fails_training_before_the_first_step(tmp_path: Path, tiny_config,
                                                                   synthetic_manifest) -> None:
    from reid.engine.trainer import train

    manifest, broken = with_corrupt_gallery_image(synthetic_manifest, tmp_path / "broken")
    with pytest.raises(CorruptImageError, match=re.escape(str(broken))) as err:
        train(tiny_config, manifest, progress=False)
    assert "data.corrupt_images=skip" in str(err.value) and "Nothing was trained" in str(err.value)
    assert not (Path(tiny_config.train.output_dir) / "last.pt").exists()


def tweak(config, **sections: dict):
    tree = config.model_dump(mode="json")
    for section, values in sections.items():
        tree[section].update(values)
    from reid.config import validate

    return validate(tree)


def test_resume_accepts_changes_that_do_not_touch_what_was_learned(tmp_path: Path, tiny_config,
                                                                   synthetic_manifest) -> None:
    """The fixes the corrupt-image error suggests (skip it; delete it and re-prepare) keep --resume working."""
    from reid.data.manifest import build_manifest
    from reid.engine.trainer import train

    config = tweak(tiny_config, train={"epochs": 1}, tracking={"enabled": False})
    train(config, synthetic_manifest, progress=False)
    splits = synthetic_manifest.splits()
    splits.gallery = splits.gallery[1:]  # the corrupt gallery image deleted, the dataset re-prepared
    reprepared = build_manifest(splits)
    assert reprepared.content_hash != synthetic_manifest.content_hash
    more = tweak(config, train={"epochs": 2}, data={"corrupt_images": "skip"}, eval={"max_rank": 20})
    result = train(more, reprepared, resume=True, progress=False)
    assert result.resumed_from_epoch == 1 and result.epochs == 2


# -- 3: evaluation-only cross-domain targets -------------------------------------------------------------------
def targets_params(tmp_path: Path, main: Path, targets: list[dict]) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(json.dumps({"data": {"format": "folder", "root": str(main),
                                         "manifest": str(tmp_path / "m" / "manifest.json")},
                                "evaluate": {"targets": targets}}))
    return path


def test_a_target_may_be_an_evaluation_only_dataset(tmp_path: Path) -> None:
    from reid.data.manifest import load_manifest

    main = folder_dataset(tmp_path / "main", good_layout())
    test_only = good_layout()
    del test_only["train"]
    far = folder_dataset(tmp_path / "far", test_only)
    near = folder_dataset(tmp_path / "near", test_only)
    (near / "train").mkdir()  # an empty train/
    params = targets_params(tmp_path, main, [{"name": "far", "format": "folder", "root": str(far)},
                                             {"name": "near", "format": "folder", "root": str(near)}])
    result = runner.invoke(app(), ["prepare", "--params", str(params)])
    assert result.exit_code == 0, result.output
    for name in ("far", "near"):
        target = load_manifest(tmp_path / "m" / "targets" / f"{name}.json")
        assert (len(target.train), len(target.query), len(target.gallery)) == (0, 3, 6)


def test_target_errors_name_the_target_keys(tmp_path: Path) -> None:
    main = folder_dataset(tmp_path / "main", good_layout())
    params = targets_params(tmp_path, main, [{"name": "far", "format": "folder", "root": str(tmp_path / "nowhere")}])
    result = runner.invoke(app(), ["prepare", "--params", str(params)])
    assert result.exit_code == 2
    assert "evaluate.targets[far].root" in result.stderr
    assert "data.root" not in result.stderr and "--root" not in result.stderr
    wrong = folder_dataset(tmp_path / "wrong", {"bounding_box_test": {"p1": ["cam1_0.jpg"]},
                                                "query": {"p1": ["cam2_0.jpg"]}})
    params = targets_params(tmp_path, main, [{"name": "far", "format": "folder", "root": str(wrong)}])
    result = runner.invoke(app(), ["prepare", "--params", str(params)])
    assert result.exit_code == 2 and "evaluate.targets[far]" in result.stderr
    assert "data.root" not in result.stderr and "data.format" not in result.stderr, result.stderr


# -- 4: a path with a space ---------------------------------------------------------------------------------
def test_a_path_with_a_space_is_quoted_in_hints_and_kept_out_of_registry_names(
        tmp_path: Path, tiny_config, synthetic_manifest, monkeypatch: pytest.MonkeyPatch) -> None:
    import reid.engine.trainer as trainer_module
    from reid.data.manifest import write_manifest
    from reid.deploy.registry import registered_name

    write_manifest(synthetic_manifest, tiny_config.data.manifest)
    params = write_params(tmp_path / "my project" / "params.yaml", tiny_config)
    out = Path(tiny_config.train.output_dir)

    def fake_train(config, manifest, resume=False, **kwargs):
        return trainer_module.TrainResult(out, out / "last.pt", None, out / "metrics.json", out / "config.yaml",
                                          {"mAP": 0.5}, None, None, 1, 3, "run123")

    monkeypatch.setattr(trainer_module, "train", fake_train)
    result = runner.invoke(app(), ["train", "--params", str(params)])
    assert result.exit_code == 0, result.output
    hint = result.stdout.split("see it with: ", 1)[1].splitlines()[0]
    assert shlex.split(hint) == ["reid", "ui", "--params", str(params)]
    from reid.data.manifest import load_manifest
    from reid.errors import DatasetError

    with pytest.raises(DatasetError) as err:
        load_manifest(tmp_path / "none.json", params)
    assert f"run `reid prepare --params {shlex.quote(str(params))}` first" in str(err.value)
    assert registered_name("reid", "my run") == "reid-my-run"
    assert registered_name("reid market", "a/b  c") == "reid-market-a-b-c"


# -- 5: camera tokens ---------------------------------------------------------------------------------------
def prepare_folder(tmp_path: Path, layout: dict, *args: str, **data: object):
    root = folder_dataset(tmp_path / "ds", layout)
    params = tmp_path / "p.yaml"
    params.write_text(json.dumps({"data": {"format": "folder", "root": str(root),
                                           "manifest": str(tmp_path / "m" / "manifest.json"), **data}}))
    return runner.invoke(app(), ["prepare", "--params", str(params), *args]), root


def test_any_consistent_camera_token_is_a_camera(tmp_path: Path) -> None:
    layout = {
        "train": {f"t{i}": [f"cam{c}_{n}.jpg" for c in "AB" for n in range(2)] for i in range(4)},
        "query": {f"p{i}": ["camA_0.jpg"] for i in range(3)},
        "gallery": {f"p{i}": ["camB_0.jpg", "camB_1.jpg"] for i in range(3)},
    }
    result, _ = prepare_folder(tmp_path, layout)
    assert result.exit_code == 0, result.output
    assert "do not look like cameras" not in result.stderr and "warning" not in result.stderr, result.stderr
    assert "camA=1, camB=2" in result.stdout


# -- 6: one unit in what people read ------------------------------------------------------------------------
def test_training_prints_percent_like_evaluate(tiny_config, synthetic_manifest) -> None:
    from reid.engine.progress import format_stats
    from reid.engine.trainer import train

    lines: list[str] = []
    config = tweak(tiny_config, train={"epochs": 1}, tracking={"enabled": False})
    result = train(config, synthetic_manifest, progress=False, log=lines.append)
    epoch = next(line for line in lines if line.startswith("epoch 1:"))
    assert f"mAP {100 * result.metrics['mAP']:.1f} |" in epoch and f"R1 {100 * result.metrics['rank1']:.1f}" in epoch
    assert 0 <= result.metrics["mAP"] <= 1  # metrics files and MLflow keep fractions
    assert "acc 25.0%" in format_stats({"acc": 0.25})


# -- 7: search marks right and wrong hits on folder data ----------------------------------------------------
def random_checkpoint(path: Path, config, num_classes: int) -> Path:
    """A `reid train`-format checkpoint of an untrained model: enough to embed images."""
    import torch

    from reid.checkpoint import save_checkpoint
    from reid.models.reid_model import build_model

    torch.manual_seed(0)
    model = build_model(config, num_classes).eval()
    return save_checkpoint({"config": config.model_dump(mode="json"), "num_classes": num_classes, "epoch": 1,
                            "global_step": 1, "model": model.state_dict()}, path)


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


# -- 8: no advice to switch on what is on ------------------------------------------------------------------
def test_the_skip_warning_does_not_advise_skip(tmp_path: Path) -> None:
    layout = good_layout()
    root = folder_dataset(tmp_path / "ds", layout)
    (root / "gallery" / "p0" / "cam2_1.jpg").write_bytes(b"\xff\xd8 truncated")
    params = tmp_path / "p.yaml"
    params.write_text(json.dumps({"data": {"format": "folder", "root": str(root), "corrupt_images": "skip",
                                           "manifest": str(tmp_path / "m" / "manifest.json")}}))
    result = runner.invoke(app(), ["prepare", "--params", str(params), "--check-images"])
    assert result.exit_code == 0, result.output
    warning = next(line for line in result.stderr.splitlines() if "cam2_1.jpg" in line)
    assert "skipped corrupt image" in warning and "corrupt_images=skip" not in warning


# -- 9: several datasets in one folder; targets only when asked ---------------------------------------------
def test_several_datasets_prepared_into_one_folder_keep_their_statistics(tmp_path: Path) -> None:
    small = good_layout(query={"p0": ["cam1_0.jpg"]}, gallery={"p0": ["cam2_0.jpg"]})
    a = folder_dataset(tmp_path / "a", good_layout())
    b = folder_dataset(tmp_path / "b", small)
    far = good_layout()
    del far["train"]
    far_root = folder_dataset(tmp_path / "far", far)
    params = targets_params(tmp_path, a, [{"name": "far", "format": "folder", "root": str(far_root)},
                                          {"name": "gone", "format": "folder", "root": str(tmp_path / "gone")}])
    prep = tmp_path / "prep"
    for name, root in (("a", a), ("b", b)):
        result = runner.invoke(app(), ["prepare", "--params", str(params), "--root", str(root), "--no-targets",
                                       "--output", str(prep / f"{name}.json")])
        assert result.exit_code == 0, result.output  # the missing target "gone" is not read
    assert json.loads((prep / "a.statistics.json").read_text())["query"]["images"] == 3
    assert json.loads((prep / "b.statistics.json").read_text())["query"]["images"] == 1
    assert not (prep / "targets").exists()
    result = runner.invoke(app(), ["prepare", "--params", str(params), "--target", "far"])
    assert result.exit_code == 0, result.output
    index = json.loads((tmp_path / "m" / "targets" / "index.json").read_text())
    assert [t["name"] for t in index["targets"]] == ["far"]


# -- 10: a typo in --format ---------------------------------------------------------------------------------
def test_a_format_typo_is_blamed_on_the_option(tmp_path: Path) -> None:
    params = tmp_path / "p.yaml"
    params.write_text("{}\n")
    result = runner.invoke(app(), ["prepare", "--params", str(params), "--format", "markett"])
    assert result.exit_code == 2
    assert "--format" in result.output and "'pack'" in result.output and "override" not in result.output
    assert "pack" in runner.invoke(app(), ["prepare", "--help"]).output


# -- 11: unsupported image types are reported ---------------------------------------------------------------
def test_unsupported_image_types_are_reported_not_dropped_silently(tmp_path: Path) -> None:
    from PIL import Image

    layout = good_layout()
    root = folder_dataset(tmp_path / "ds", layout)
    Image.new("RGB", (16, 32)).save(root / "train" / "t0" / "cam1_9.gif")
    result = runner.invoke(app(), ["prepare", "--params", str(params_for(tmp_path, root))])
    assert result.exit_code == 0, result.output
    assert "1 image file(s) of an unsupported type (.gif) were ignored (t0/cam1_9.gif)" in result.stderr
    for path in (root / "query").rglob("*.jpg"):
        Image.open(path).save(path.with_suffix(".gif"))
        path.unlink()
    result = runner.invoke(app(), ["prepare", "--params", str(params_for(tmp_path, root))])
    assert result.exit_code == 2 and "no usable images" in result.stderr
    assert "3 image file(s) of an unsupported type (.gif)" in result.stderr and "convert them" in result.stderr
    assert "p0/cam1_0.gif, p1/cam1_0.gif, p2/cam1_0.gif" in result.stderr  # the ignored files are named


def test_webp_and_bmp_images_are_read_like_jpeg(tmp_path: Path) -> None:
    """Pillow decodes them, so a folder of .webp or .bmp crops is a dataset, not a list of ignored files."""
    from PIL import Image

    from reid.data.datasets import read_dataset
    from reid.data.images import decode_image

    root = folder_dataset(tmp_path / "ds", good_layout())
    converted = []
    for index, path in enumerate(sorted((root / "query").rglob("*.jpg"))):
        target = path.with_suffix(".webp" if index % 2 else ".bmp")
        Image.open(path).save(target)
        path.unlink()
        converted.append(str(target))
    splits = read_dataset("folder", root)
    assert sorted(s.path for s in splits.query) == sorted(converted) and not splits.warnings
    assert all(decode_image(p).shape[0] == 3 for p in converted)


def params_for(tmp_path: Path, root: Path, **data: object) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(json.dumps({"data": {"format": "folder", "root": str(root),
                                         "manifest": str(tmp_path / "m" / "manifest.json"), **data}}))
    return path


# -- 12: a query identity absent from the gallery -----------------------------------------------------------
def test_prepare_names_query_identities_absent_from_the_gallery(tmp_path: Path) -> None:
    layout = good_layout(gallery={f"p{i}": ["cam2_0.jpg"] for i in range(2)})  # p2 has no gallery image
    result, root = prepare_folder(tmp_path, layout)
    assert result.exit_code == 0, result.output
    assert "1 query identity has no image in the gallery" in result.stderr
    assert str(root / "query" / "p2" / "cam1_0.jpg") in result.stderr


# -- 13: the variant tag says what the run is ---------------------------------------------------------------
def test_the_variant_tag_says_what_the_run_is(tmp_path: Path, tiny_config, synthetic_manifest,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    from reid.data.manifest import write_manifest

    monkeypatch.chdir(tmp_path)
    write_manifest(synthetic_manifest, tiny_config.data.manifest)
    params = write_params(tmp_path / "p.yaml", tiny_config)
    runs = {"untrained": ["-o", "train.epochs=0", "--run-name", "untrained"],
            "moved": ["-o", "train.epochs=0", "-o", "train.eval_every=3"]}
    for name, args in runs.items():
        result = runner.invoke(app(), ["train", "--params", str(params), "-o", f"train.output_dir={tmp_path / name}",
                                       *args])
        assert result.exit_code == 0, result.output
    client = MlflowClient(tracking_uri=tiny_config.tracking.uri)
    experiment = client.get_experiment_by_name(tiny_config.tracking.experiment)
    tags = {r.info.run_name: r.data.tags for r in client.search_runs([experiment.experiment_id])}
    assert tags["untrained"]["variant"] == "untrained" and tags["untrained"]["reid.overrides"] == "train.epochs=0"
    assert tags["moved"]["variant"] == "baseline+train.epochs=0" and tags["moved"]["reid.based_on"] == "baseline"
    from reid.commands.train import identity_tags

    same = write_params(tmp_path / "q.yaml", tiny_config)
    config = tweak(tiny_config, train={"output_dir": str(tmp_path / "x"), "device": "cpu"})
    assert identity_tags(same, None, [f"train.output_dir={tmp_path / 'x'}"], None, config) == {}  # still the baseline


# -- 14: the checkpoint's protocol ---------------------------------------------------------------------------
def test_evaluate_uses_the_checkpoints_protocol_unless_overridden(tmp_path: Path, tiny_config) -> None:
    layout = good_layout(gallery={f"p{i}": ["cam1_5.jpg", "cam1_6.jpg"] for i in range(3)})  # one camera
    result, _ = prepare_folder(tmp_path, layout)
    assert result.exit_code == 0, result.output
    trained = tweak(tiny_config, eval={"cross_camera": False})
    model = random_checkpoint(tmp_path / "model" / "last.pt", trained, 4)
    params = tmp_path / "eval.yaml"
    params.write_text(json.dumps({"data": {"manifest": str(tmp_path / "m" / "manifest.json"), "num_workers": 0},
                                  "train": {"device": "cpu"}, "tracking": {"enabled": False}}))
    args = ["evaluate", str(model), "--params", str(params), "--output", str(tmp_path / "out")]
    done = runner.invoke(app(), args)
    assert done.exit_code == 0, done.output
    assert "eval.cross_camera: using the checkpoint's false" in done.stderr
    refused = runner.invoke(app(), [*args, "-o", "eval.cross_camera=true"])  # the user's choice wins
    assert refused.exit_code == 2 and "cross_camera" in refused.stderr


# -- 15: the manifest the checkpoint was trained on ---------------------------------------------------------
def test_the_other_data_error_names_the_manifest_trained_on(tmp_path: Path, tiny_config, synthetic_manifest) -> None:
    from reid.data.manifest import build_manifest
    from reid.engine.trainer import train

    trained_on = tmp_path / "trained_on" / "manifest.json"
    config = tweak(tiny_config, train={"epochs": 1}, tracking={"enabled": False}, data={"manifest": str(trained_on)})
    train(config, synthetic_manifest, progress=False)
    splits = synthetic_manifest.splits()
    del splits.train[1]  # one training image fewer (its identity keeps others: the same class count)
    other = build_manifest(splits)
    assert other.num_classes == synthetic_manifest.num_classes
    now = tweak(config, train={"epochs": 2}, data={"manifest": str(tmp_path / "now.json")})
    with pytest.raises(CheckpointError, match=re.escape(str(trained_on))) as err:
        train(now, other, resume=True, progress=False)
    assert "training samples" in str(err.value) and "now.json" in str(err.value)
