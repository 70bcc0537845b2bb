"""Starting weights (load_matching, files, the ImageNet cache) and loading trained checkpoints."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from reid.config import validate
from reid.checkpoint import save_checkpoint
from reid.errors import CheckpointError
from reid.models.inference import check_compatible, load_inference_model
from reid.models import pretrained as pretrained_module
from reid.models.pretrained import (
    imagenet_cache_path, imagenet_state_dict, imagenet_url, load_matching, load_pretrained,
)
from reid.models.reid_model import build_model


def make_config(**model):
    return validate({"model": {"backbone": "resnet18", "pretrained": "none", "channels_last": False, **model},
                     "data": {"height": 64, "width": 32}, "tracking": {"enabled": False}}, "test")


def tv_state(name: str = "resnet18", seed: int = 1) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    net = getattr(torchvision.models, name)(weights=None)
    with torch.no_grad():  # non-default BatchNorm statistics, so copying them is visible
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    return net.state_dict()


def model_config(path: Path):
    """``model`` section for ``pretrained=file`` from ``path``."""
    return make_config(pretrained="file", pretrained_path=str(path)).model


def random_model(num_classes: int, backbone: str = "resnet18") -> nn.Module:
    torch.manual_seed(4)
    return build_model(make_config(backbone=backbone), num_classes)


# -- load_matching -----------------------------------------------------------------------------------
def test_load_matching_copies_everything_but_the_classifier():
    torch.manual_seed(0)
    model = build_model(make_config(), num_classes=5)
    torch.manual_seed(1)
    other = build_model(make_config(), num_classes=9)
    classifier_before = model.classifier.weight.clone()
    source = other.state_dict()

    report = load_matching(model, source)

    for key, value in model.state_dict().items():
        if key.startswith("backbone.") or key.startswith("neck."):
            assert torch.equal(value, source[key]), key
    assert torch.equal(model.classifier.weight, classifier_before)
    assert report.skipped == {"classifier.weight": "excluded (classifier)"}
    assert "backbone.stem.conv1.weight" in report.loaded and "classifier.weight" not in report.loaded
    assert report.unexpected == [] and report.missing == []
    assert "loaded" in report.summary() and "classifier.weight" in report.summary()


def test_load_matching_reports_shape_mismatches_and_unknown_keys():
    model = build_model(make_config(), num_classes=5)
    conv = model.backbone.stem.conv1.weight.clone()
    report = load_matching(model, {"backbone.stem.conv1.weight": torch.zeros(3, 3, 3, 3),
                                   "backbone.layer1.0.conv1.weight": torch.ones(64, 64, 3, 3),
                                   "head.weight": torch.zeros(2)}, exclude_prefixes=())
    assert report.loaded == ["backbone.layer1.0.conv1.weight"]
    assert "shape [3, 3, 3, 3] in file, [64, 3, 7, 7] in model" in report.skipped["backbone.stem.conv1.weight"]
    assert report.unexpected == ["head.weight"]
    assert "classifier.weight" in report.missing and "backbone.stem.conv1.weight" not in report.missing
    assert torch.equal(model.backbone.stem.conv1.weight, conv)
    assert torch.equal(model.backbone.layer1[0].conv1.weight, torch.ones(64, 64, 3, 3))


# -- pretrained: file ----------------------------------------------------------------------------------
def test_file_in_torchvision_layout_loads_into_the_backbone(tmp_path):
    state = tv_state("resnet18")
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    model = build_model(make_config(), 5)
    classifier = model.classifier.weight.clone()

    report = load_pretrained(model, model_config(path))

    assert torch.equal(model.backbone.stem.conv1.weight, state["conv1.weight"])
    assert torch.equal(model.backbone.stem.bn1.running_var, state["bn1.running_var"])
    assert torch.equal(model.backbone.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    assert torch.equal(model.classifier.weight, classifier)
    assert report is not None and set(report.skipped) == {"fc.weight", "fc.bias"}
    assert report.unexpected == []
    assert all(k.startswith(("neck.", "classifier.")) for k in report.missing)


def test_file_with_a_wrapper_and_dataparallel_prefix_loads(tmp_path):
    state = tv_state("resnet18")
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    model = build_model(make_config(), 5)
    report = load_pretrained(model, model_config(path))
    assert torch.equal(model.backbone.layer2[0].downsample[0].weight, state["layer2.0.downsample.0.weight"])
    assert report is not None and report.unexpected == []


def test_file_that_is_a_reid_checkpoint_loads_all_but_the_classifier(tmp_path):
    torch.manual_seed(2)
    trained = build_model(make_config(), 751)
    with torch.no_grad():
        trained.neck.weight.uniform_(0.5, 1.5)
    path = save_checkpoint({"config": make_config().model_dump(mode="json"), "num_classes": 751,
                            "model": trained.state_dict()}, tmp_path / "best.pt")
    model = build_model(make_config(), 16)
    report = load_pretrained(model, model_config(path))
    assert torch.equal(model.neck.weight, trained.neck.weight)
    assert torch.equal(model.backbone.layer3[1].conv1.weight, trained.backbone.layer3[1].conv1.weight)
    assert report is not None and report.skipped == {"classifier.weight": "excluded (classifier)"}


def test_file_of_another_depth_is_refused_with_both_names(tmp_path):
    path = tmp_path / "resnet34.pth"
    torch.save(tv_state("resnet34"), path)
    with pytest.raises(CheckpointError, match=r"resnet34.*resnet18"):
        load_pretrained(build_model(make_config(), 5), model_config(path))


def test_pickled_object_file_is_refused(tmp_path):
    path = tmp_path / "module.pth"
    torch.save(nn.Linear(2, 2), path)  # a whole pickled module, not a state dict
    with pytest.raises(CheckpointError, match="pickle"):
        load_pretrained(build_model(make_config(), 5), model_config(path))


def test_file_without_tensors_is_refused(tmp_path):
    path = tmp_path / "empty.pth"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(CheckpointError, match="no state dict"):
        load_pretrained(build_model(make_config(), 5), model_config(path))
    path2 = tmp_path / "foreign.pth"
    torch.save({"encoder.weight": torch.zeros(3)}, path2)
    with pytest.raises(CheckpointError, match="no tensor"):
        load_pretrained(build_model(make_config(), 5), model_config(path2))


def test_pretrained_none_does_nothing():
    model = build_model(make_config(), 5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert load_pretrained(model, make_config().model) is None
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


# -- pretrained: imagenet --------------------------------------------------------------------------------
def test_imagenet_without_cache_or_network_fails_fast_and_says_what_to_do(refused_downloads, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    calls = refused_downloads
    model = build_model(make_config(), 5)
    expected = tmp_path / "torch_home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert imagenet_cache_path("resnet18") == expected
    # "Fails fast" is checked by its mechanism, not by wall time (a busy CI machine is slow): the one
    # download attempt runs under the socket timeout, which is restored afterwards.
    refuse, timeouts = torch.hub.urlopen, []

    def timed_refuse(req, *args, **kwargs):
        timeouts.append(socket.getdefaulttimeout())
        return refuse(req, *args, **kwargs)

    monkeypatch.setattr(torch.hub, "urlopen", timed_refuse)
    before = socket.getdefaulttimeout()
    with pytest.raises(CheckpointError) as info:
        load_pretrained(model, make_config(pretrained="imagenet").model)
    assert timeouts == [pretrained_module.DOWNLOAD_TIMEOUT_S] and socket.getdefaulttimeout() == before
    message = str(info.value)
    assert str(expected) in message and "pretrained=file" in message and "pretrained=none" in message
    assert calls == ["https://download.pytorch.org/models/resnet18-f37072fd.pth"]
    assert not any(expected.parent.glob("*.partial"))


def test_imagenet_from_the_cache_needs_no_network(refused_downloads, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    calls = refused_downloads
    state = tv_state("resnet18")
    cached = imagenet_cache_path("resnet18")
    cached.parent.mkdir(parents=True)
    torch.save(state, cached)
    model = build_model(make_config(), 5)
    report = load_pretrained(model, make_config(pretrained="imagenet").model)
    assert calls == []
    assert torch.equal(model.backbone.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
    assert report is not None and set(report.skipped) == {"fc.weight", "fc.bias"}


def ibn_net_release_state(backbone: str = "resnet50_ibn_a", seed: int = 2) -> dict[str, torch.Tensor]:
    """A state dict in the layout of IBN-Net's ``resnet_ibn_a`` release (random values, right names and shapes).

    IBN-Net's model has ``conv1``/``bn1`` at the top, ``layerN.i.bn1.IN`` (affine InstanceNorm: weight and
    bias only) and ``layerN.i.bn1.BN`` in layers 1-3, a plain ``bn1`` in layer4, and a 1000-class ``fc``.
    """
    from reid.models.backbones import build_backbone

    torch.manual_seed(seed)
    net = build_backbone(backbone, last_stride=2)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.weight is not None:
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    state = {k.removeprefix("stem."): v for k, v in net.state_dict().items()}
    state["fc.weight"] = torch.randn(1000, net.out_channels)
    state["fc.bias"] = torch.randn(1000)
    # The release's names, written out: a mismatch here means our backbone drifted from IBN-Net's layout.
    for key in ("conv1.weight", "bn1.running_mean", "layer1.0.bn1.IN.weight", "layer1.0.bn1.IN.bias",
                "layer1.0.bn1.BN.running_var", "layer3.5.bn1.BN.weight", "layer4.0.bn1.weight",
                "layer1.0.downsample.1.running_mean"):
        assert key in state, key
    assert "layer1.0.bn1.IN.running_mean" not in state and state["layer1.0.bn1.IN.weight"].shape == (32,)
    return state


def write_release_file(folder: Path, stem: str, state: dict[str, torch.Tensor]) -> Path:
    """Save ``state`` under torch hub's ``<stem>-<sha256 prefix>.pth`` naming; return the path."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "tmp.pth"
    torch.save(state, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    path = folder / f"{stem}-{digest[:8]}.pth"
    tmp.rename(path)
    return path


def test_ibn_a_imagenet_weights_are_ibn_nets_release_in_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    checkpoints = tmp_path / "torch_home" / "hub" / "checkpoints"
    assert imagenet_cache_path("resnet50_ibn_a") == checkpoints / "resnet50_ibn_a-d9d0bb7b.pth"
    assert imagenet_cache_path("resnet101_ibn_a") == checkpoints / "resnet101_ibn_a-59ea0ac6.pth"
    assert imagenet_url("resnet50_ibn_a") == (
        "https://github.com/XingangPan/IBN-Net/releases/download/v1.0/resnet50_ibn_a-d9d0bb7b.pth")


def test_ibn_a_imagenet_loads_every_ibn_tensor_from_the_hub_cache(refused_downloads, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    calls = refused_downloads
    state = ibn_net_release_state()
    path = write_release_file(tmp_path / "torch_home" / "hub" / "checkpoints", "resnet50_ibn_a", state)
    monkeypatch.setitem(pretrained_module.IBN_A_RELEASES, "resnet50_ibn_a", path.name)
    config = make_config(backbone="resnet50_ibn_a", pretrained="imagenet")
    model = build_model(config, 5)
    report = load_pretrained(model, config.model)
    assert calls == [] and report is not None
    assert [k for k in report.missing if ".bn1.IN." in k or ".bn1.BN." in k] == []
    assert [k for k in report.missing if k.startswith("backbone.")] == []
    assert report.unexpected == [] and set(report.skipped) == {"fc.weight", "fc.bias"}
    own = model.state_dict()
    for key in ("layer1.0.bn1.IN.weight", "layer2.3.bn1.IN.bias", "layer3.5.bn1.BN.running_mean",
                "layer4.2.bn1.weight", "conv1.weight", "bn1.running_var"):
        target = ("backbone.stem." + key) if not key.startswith("layer") else ("backbone." + key)
        assert torch.equal(own[target], state[key]), key


def test_ibn_a_imagenet_offline_fails_naming_the_file_and_the_folder(refused_downloads, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    calls = refused_downloads
    config = make_config(backbone="resnet50_ibn_a", pretrained="imagenet")
    with pytest.raises(CheckpointError) as info:
        load_pretrained(build_model(config, 5), config.model)
    message = str(info.value)
    folder = tmp_path / "torch_home" / "hub" / "checkpoints"
    assert "resnet50_ibn_a-d9d0bb7b.pth" in message and str(folder) in message
    assert calls == ["https://github.com/XingangPan/IBN-Net/releases/download/v1.0/resnet50_ibn_a-d9d0bb7b.pth"]
    assert not any(folder.glob("*.partial"))


def test_ibn_a_file_in_the_cache_with_another_hash_is_refused(refused_downloads, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    cached = imagenet_cache_path("resnet50_ibn_a")
    cached.parent.mkdir(parents=True)
    torch.save({"conv1.weight": torch.zeros(1)}, cached)  # not the release: its hash cannot start d9d0bb7b
    with pytest.raises(CheckpointError, match=r"SHA-256 prefix.*d9d0bb7b"):
        imagenet_state_dict("resnet50_ibn_a")


def test_plain_weights_into_ibn_a_and_ibn_weights_into_plain_are_refused(tmp_path):
    plain = tmp_path / "resnet50.pth"
    torch.save(tv_state("resnet50"), plain)
    ibn_config = make_config(backbone="resnet50_ibn_a", pretrained="file", pretrained_path=str(plain))
    ibn_model = build_model(ibn_config, 5)
    before = {k: v.clone() for k, v in ibn_model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"plain ResNet weights \(resnet50\).*resnet50_ibn_a \(IBN-a\)"):
        load_pretrained(ibn_model, ibn_config.model)
    assert all(torch.equal(v, ibn_model.state_dict()[k]) for k, v in before.items())  # nothing half-loaded

    ibn = tmp_path / "resnet50_ibn_a.pth"
    torch.save(ibn_net_release_state(), ibn)
    plain_config = make_config(backbone="resnet50", pretrained="file", pretrained_path=str(ibn))
    with pytest.raises(CheckpointError, match=r"IBN-a weights \(resnet50_ibn_a\).*resnet50 \(plain ResNet\)"):
        load_pretrained(build_model(plain_config, 5), plain_config.model)


def test_plain_imagenet_file_in_an_ibn_a_cache_slot_is_refused(refused_downloads, tmp_path, monkeypatch):
    # E.g. torchvision's resnet50 copied under the IBN-a name: the family check fires, not a half load.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    path = write_release_file(tmp_path / "torch_home" / "hub" / "checkpoints", "resnet50_ibn_a", tv_state("resnet50"))
    monkeypatch.setitem(pretrained_module.IBN_A_RELEASES, "resnet50_ibn_a", path.name)
    config = make_config(backbone="resnet50_ibn_a", pretrained="imagenet")
    with pytest.raises(CheckpointError, match="plain ResNet weights"):
        load_pretrained(build_model(config, 5), config.model)


# -- trained checkpoints ------------------------------------------------------------------------------------
def save_reid(tmp_path: Path, num_classes: int) -> tuple[Path, nn.Module]:
    config = make_config()
    torch.manual_seed(3)
    model = build_model(config, num_classes).train()
    with torch.no_grad():
        model(torch.randn(8, 3, 64, 32))  # non-trivial running statistics
    path = save_checkpoint({"config": config.model_dump(mode="json"), "num_classes": num_classes,
                            "model": model.state_dict()}, tmp_path / "best.pt")
    return path, model


def test_load_inference_model_restores_the_model_in_eval_mode(tmp_path):
    path, original = save_reid(tmp_path, num_classes=6)
    model, config = load_inference_model(path, "cpu")
    assert config.model.backbone == "resnet18" and model.num_classes == 6
    assert not model.training and not any(m.training for m in model.modules())
    x = torch.randn(3, 3, 64, 32)
    original.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), original(x))


def test_load_inference_model_refuses_incomplete_checkpoints(tmp_path):
    path = save_checkpoint({"num_classes": 3, "model": {}}, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="lacks config"):
        load_inference_model(path, "cpu")
    bad = save_checkpoint({"config": {"model": {"backbone": "vgg"}}, "num_classes": 3, "model": {}},
                          tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="model.backbone"):
        load_inference_model(bad, "cpu")


def test_check_compatible_names_a_different_class_count():
    trained = random_model(751)
    with pytest.raises(CheckpointError, match="checkpoint has 751 classes, the model has 16"):
        check_compatible(trained.state_dict(), build_model(make_config(), 16))


def test_check_compatible_names_a_different_backbone():
    trained = random_model(16, backbone="resnet34")
    with pytest.raises(CheckpointError, match="trained with backbone resnet34, the model is resnet18"):
        check_compatible(trained.state_dict(), build_model(make_config(), 16))


def test_check_compatible_accepts_a_matching_state_and_names_a_missing_neck():
    trained = random_model(16)
    check_compatible(trained.state_dict(), build_model(make_config(), 16))
    with pytest.raises(CheckpointError, match="has BN-neck, the model has none"):
        check_compatible(trained.state_dict(), build_model(make_config(neck="none"), 16))


def test_load_inference_model_reports_a_checkpoint_that_does_not_fit_its_config(tmp_path):
    config = make_config()
    other = build_model(make_config(backbone="resnet34"), 4)
    path = save_checkpoint({"config": config.model_dump(mode="json"), "num_classes": 4,
                            "model": other.state_dict()}, tmp_path / "mixed.pt")
    with pytest.raises(CheckpointError, match="resnet34.*resnet18"):
        load_inference_model(path, "cpu")


