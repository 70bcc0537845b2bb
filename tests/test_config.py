"""Parameters: recipe defaults, variants, overrides, and errors that name the offending key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from reid.config import Config, ConfigError, deep_merge, flatten, load_config, validate


def write(tmp_path: Path, tree: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_defaults_are_the_published_recipe() -> None:
    c = Config()
    assert (c.data.height, c.data.width) == (256, 128)
    assert (c.data.ids_per_batch, c.data.instances_per_id, c.data.batch_size) == (16, 4, 64)
    assert (c.data.flip_prob, c.data.padding, c.data.random_erasing_prob) == (0.5, 10, 0.5)
    assert (c.optim.optimizer, c.optim.lr, c.optim.weight_decay) == ("adam", 3.5e-4, 5e-4)
    assert (c.train.epochs, c.optim.milestones, c.optim.gamma) == (120, [40, 70], 0.1)
    assert (c.optim.warmup_epochs, c.optim.warmup_factor) == (10, 0.01)
    assert (c.loss.label_smoothing, c.loss.triplet_margin) == (0.1, 0.3)
    assert (c.model.last_stride, c.model.neck, c.model.neck_feat) == (1, "bnneck", "after")
    assert c.kd.feature_loss_coefficient == 0.03
    assert c.eval.distance == "cosine" and c.eval.cross_camera


def test_unknown_key_names_full_path_and_allowed_keys(tmp_path: Path) -> None:
    path = write(tmp_path, {"model": {"backbone": "resnet18", "last_strid": 1}})
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    msg = str(exc.value)
    assert "model.last_strid" in msg
    assert "last_stride" in msg and "allowed here" in msg


def test_wrong_type_and_value_name_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, {"optim": {"lr": "fast"}, "data": {"flip_prob": 1.5}, "model": {"backbone": "vgg"}})
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    msg = str(exc.value)
    for key in ("optim.lr", "data.flip_prob", "model.backbone"):
        assert key in msg
    assert "resnet50_ibn_a" in msg  # the allowed values are listed


def test_unknown_section_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="trian"):
        load_config(write(tmp_path, {"trian": {"epochs": 3}}))


def test_variant_deep_merges_over_base(tmp_path: Path) -> None:
    path = write(tmp_path, {
        "model": {"backbone": "resnet50"},
        "variants": {"sd": {"kd": {"self_distill": True, "feature_loss_coefficient": 0.1}}},
    })
    base = load_config(path)
    sd = load_config(path, variant="sd")
    assert not base.kd.self_distill
    assert sd.kd.self_distill and sd.kd.feature_loss_coefficient == 0.1
    assert sd.model.backbone == "resnet50"


def test_broken_variant_fails_even_when_another_is_loaded(tmp_path: Path) -> None:
    path = write(tmp_path, {"variants": {"ok": {}, "bad": {"kd": {"temprature": 4}}}})
    with pytest.raises(ConfigError, match=r"variant 'bad'.*\n.*kd.temprature"):
        load_config(path, variant="ok")


def test_unknown_variant_lists_known_ones(tmp_path: Path) -> None:
    path = write(tmp_path, {"variants": {"a": {}, "b": {}}})
    with pytest.raises(ConfigError, match="unknown variant 'c'.*a, b"):
        load_config(path, variant="c")


def test_overrides_are_parsed_as_yaml_and_validated(tmp_path: Path) -> None:
    path = write(tmp_path, {})
    c = load_config(path, overrides=["optim.lr=0.001", "optim.milestones=[5, 9]", "train.compile=true"])
    assert c.optim.lr == 0.001 and c.optim.milestones == [5, 9] and c.train.compile is True
    with pytest.raises(ConfigError, match="optim.milestones"):
        load_config(path, overrides=["optim.milestones=[9, 5]"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(path, overrides=["optim.lr"])


def test_self_distill_students_must_be_shallower_than_teacher() -> None:
    with pytest.raises(ConfigError, match="shallower"):
        validate({"kd": {"self_distill": True, "teacher_stage": "layer2", "student_stages": ["layer3"]}})


def test_pretrained_file_needs_a_path() -> None:
    with pytest.raises(ConfigError, match="pretrained_path"):
        validate({"model": {"pretrained": "file"}})


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_flatten_and_merge_helpers() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": "x"}) == {"a.b": 1, "a.c.d": [1, 2], "e": "x"}
    base = {"a": {"b": 1, "c": 2}}
    assert deep_merge(base, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}
    assert base == {"a": {"b": 1, "c": 2}}
    flat = Config().flat()
    assert flat["kd.feature_loss_coefficient"] == 0.03 and flat["model.backbone"] == "resnet50"


def test_unquoted_amp_off_means_off(tmp_path: Path) -> None:
    """YAML 1.1 reads `amp: off` as false; `dvc exp run -S` writes it unquoted."""
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  amp: off\n")
    assert load_config(path).train.amp == "off"
    path.write_text("train:\n  amp: on\n")
    with pytest.raises(ConfigError, match="train.amp"):
        load_config(path)
