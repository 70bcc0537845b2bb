"""Backbones (last stride, IBN-a) and the BN-neck ReID model, on tiny inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from reid.config import validate
from reid.errors import ReidError
from reid.models.backbones import build_backbone, infer_backbone_name
from reid.models.ibn import IBN
from reid.models.reid_model import ReIDModel, build_model


def make_config(**model):
    return validate({"model": {"backbone": "resnet18", "pretrained": "none", "channels_last": False, **model},
                     "data": {"height": 64, "width": 32}}, "test")


@pytest.fixture(scope="module")
def resnet50_ibn():
    torch.manual_seed(0)
    return build_backbone("resnet50_ibn_a", last_stride=1)


# -- backbones ---------------------------------------------------------------------------------------
def test_resnet50_last_stride_one_keeps_a_16x8_map_and_two_halves_it():
    x = torch.randn(1, 3, 256, 128)
    with torch.no_grad():
        for stride, size in ((1, (16, 8)), (2, (8, 4))):
            backbone = build_backbone("resnet50", last_stride=stride).eval()
            assert backbone(x).shape == (1, 2048, *size)


def test_last_stride_is_set_on_the_strided_conv_and_the_shortcut():
    for name, conv in (("resnet18", "conv1"), ("resnet50", "conv2")):
        for stride in (1, 2):
            block = build_backbone(name, stride).layer4[0]
            assert getattr(block, conv).stride == (stride, stride)
            assert block.downsample[0].stride == (stride, stride)
    block = build_backbone("resnet18", 1).layer3[0]
    assert block.conv1.stride == (2, 2)  # only layer4 changes


def test_backbone_stages_and_channels():
    backbone = build_backbone("resnet18", last_stride=1).eval()
    assert backbone.stage_channels == {"layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512}
    assert backbone.out_channels == 512
    assert not hasattr(backbone, "fc") and not hasattr(backbone, "avgpool")
    assert [n for n, _ in backbone.stem.named_children()] == ["conv1", "bn1", "relu", "maxpool"]
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        stages = backbone(x, return_stages=True)
        final = backbone(x)
    assert list(stages) == ["layer1", "layer2", "layer3", "layer4"]
    assert [tuple(v.shape[1:]) for v in stages.values()] == [(64, 16, 8), (128, 8, 4), (256, 4, 2), (512, 4, 2)]
    torch.testing.assert_close(stages["layer4"], final)
    assert build_backbone("resnet50", 1).stage_channels == {"layer1": 256, "layer2": 512, "layer3": 1024,
                                                            "layer4": 2048}


def test_unknown_backbone_is_refused():
    with pytest.raises(ValueError, match="resnet50_ibn_a"):
        build_backbone("vgg16", 1)


def test_ibn_a_splits_bn1_in_layers_1_to_3_and_leaves_layer4_plain(resnet50_ibn):
    for layer in ("layer1", "layer2", "layer3"):
        for block in getattr(resnet50_ibn, layer):
            assert isinstance(block, Bottleneck) and isinstance(block.bn1, IBN), layer
            width = block.conv1.out_channels
            assert block.bn1.IN.num_features == width // 2 and block.bn1.IN.affine
            assert block.bn1.BN.num_features == width - width // 2
            assert isinstance(block.bn2, nn.BatchNorm2d) and isinstance(block.bn3, nn.BatchNorm2d)
    for block in resnet50_ibn.layer4:
        assert type(block.bn1) is nn.BatchNorm2d
    assert not any(isinstance(m, (IBN, nn.InstanceNorm2d)) for m in resnet50_ibn.stem.modules())
    assert infer_backbone_name(resnet50_ibn.state_dict()) == "resnet50_ibn_a"


def _norm_by_hand(x: torch.Tensor, dims: tuple[int, ...], weight, bias, eps: float) -> torch.Tensor:
    mean = x.mean(dim=dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)  # biased, as normalisation uses
    shape = (1, -1, 1, 1)
    return (x - mean) / torch.sqrt(var + eps) * weight.view(shape) + bias.view(shape)


def test_ibn_module_is_instance_norm_on_the_first_half_and_batch_norm_on_the_rest(resnet50_ibn):
    ibn = resnet50_ibn.layer1[0].bn1
    assert isinstance(ibn, IBN) and ibn.half == 32 and ibn.channels == 64
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in (ibn.IN.weight, ibn.IN.bias, ibn.BN.weight, ibn.BN.bias):
            p.copy_(torch.randn(p.shape, generator=g))
        ibn.BN.running_mean.copy_(torch.randn(32, generator=g))
        ibn.BN.running_var.copy_(torch.rand(32, generator=g) + 0.5)
    x = torch.randn(4, 64, 6, 5, generator=g) * 3 + 1
    first, rest = x[:, :32], x[:, 32:]
    expected_in = _norm_by_hand(first, (2, 3), ibn.IN.weight, ibn.IN.bias, ibn.IN.eps)  # per sample, per channel

    ibn.train()
    with torch.no_grad():
        out = ibn(x)
    expected_bn = _norm_by_hand(rest, (0, 2, 3), ibn.BN.weight, ibn.BN.bias, ibn.BN.eps)  # over the batch
    torch.testing.assert_close(out, torch.cat([expected_in, expected_bn], dim=1), atol=1e-4, rtol=1e-4)

    ibn.eval()
    with torch.no_grad():
        out = ibn(x)
    shape = (1, -1, 1, 1)
    expected_bn = ((rest - ibn.BN.running_mean.view(shape)) / torch.sqrt(ibn.BN.running_var.view(shape) + ibn.BN.eps)
                   * ibn.BN.weight.view(shape) + ibn.BN.bias.view(shape))
    torch.testing.assert_close(out, torch.cat([expected_in, expected_bn], dim=1), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("training", [True, False])
def test_ibn_block_keeps_the_memory_format_of_its_input(resnet50_ibn, training):
    """instance_norm returns NCHW; the block must still hand channels_last on (forward and gradient),
    or every one of the 13 IBN blocks converts back and forth. Values are those of the NCHW path."""
    ibn = resnet50_ibn.layer2[0].bn1
    ibn.train(training)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, ibn.channels, 8, 4, generator=g)
    x_cl = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    out_cl = ibn(x_cl)
    assert out_cl.is_contiguous(memory_format=torch.channels_last)
    out_cl.backward(torch.ones_like(out_cl))
    assert x_cl.grad.is_contiguous(memory_format=torch.channels_last)
    out = ibn(x)
    assert out.is_contiguous()  # an NCHW input stays NCHW
    torch.testing.assert_close(out_cl, out, atol=1e-5, rtol=1e-5)


def test_every_ibn_block_of_the_backbone_outputs_channels_last(resnet50_ibn):
    seen: list[bool] = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: seen.append(out.is_contiguous(memory_format=torch.channels_last)))
             for m in resnet50_ibn.modules() if isinstance(m, IBN)]
    model = resnet50_ibn.to(memory_format=torch.channels_last)
    try:
        with torch.no_grad():
            model.train()
            model.layer3(model.layer2(model.layer1(model.stem(
                torch.randn(2, 3, 64, 32).contiguous(memory_format=torch.channels_last)))))
    finally:
        for h in hooks:
            h.remove()
        model.to(memory_format=torch.contiguous_format)
    assert len(seen) == 13 and all(seen)


def test_infer_backbone_name_recognises_every_depth():
    assert infer_backbone_name(build_backbone("resnet34", 1).state_dict()) == "resnet34"
    model_keys = {f"backbone.{k}": v for k, v in build_backbone("resnet18", 1).state_dict().items()}
    assert infer_backbone_name(model_keys, "backbone.") == "resnet18"
    assert infer_backbone_name({"foo.weight": torch.zeros(1)}) is None
    assert isinstance(build_backbone("resnet18", 1).layer1[0], BasicBlock)


# -- the ReID model ---------------------------------------------------------------------------------
@pytest.fixture()
def model() -> ReIDModel:
    torch.manual_seed(0)
    return build_model(make_config(), num_classes=5)


def test_train_mode_returns_every_output_and_eval_mode_only_the_embedding(model):
    x = torch.randn(8, 3, 64, 32)
    model.train()
    out = model(x)
    assert set(out) == {"logits", "global_feat", "bn_feat", "stage_feats"}
    assert out["logits"].shape == (8, 5)
    assert out["global_feat"].shape == out["bn_feat"].shape == (8, 512) and model.embedding_dim == 512
    assert {k: v.shape[1] for k, v in out["stage_feats"].items()} == model.stage_channels
    # bn_feat is the batch-normalised global_feat (train mode: batch statistics, weight 1, bias 0).
    g = out["global_feat"]
    expected_bn = (g - g.mean(0)) / torch.sqrt(g.var(0, unbiased=False) + model.neck.eps)
    torch.testing.assert_close(out["bn_feat"], expected_bn, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out["logits"], out["bn_feat"] @ model.classifier.weight.t())
    with torch.no_grad():
        stages = model.backbone(x, return_stages=True)
    for name, fmap in stages.items():
        torch.testing.assert_close(out["stage_feats"][name], fmap.mean(dim=(2, 3)))

    model.eval()
    with torch.no_grad():
        embedding = model(x)
        everything = model.forward_all(x)
    assert isinstance(embedding, torch.Tensor) and embedding.shape == (8, 512)
    torch.testing.assert_close(embedding, everything["bn_feat"])  # neck_feat "after": the BN-neck output
    assert not torch.allclose(embedding, everything["global_feat"])


def test_neck_feat_before_and_no_neck_use_the_global_feature():
    torch.manual_seed(0)
    before = build_model(make_config(neck_feat="before"), 5).eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(before(x), before.forward_all(x)["global_feat"])

    plain = build_model(make_config(neck="none"), 5)
    assert isinstance(plain.neck, nn.Identity) and not any(k.startswith("neck.") for k in plain.state_dict())
    out = plain.train()(torch.randn(4, 3, 64, 32))
    assert out["bn_feat"] is out["global_feat"]
    torch.testing.assert_close(out["logits"], out["global_feat"] @ plain.classifier.weight.t())
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x), plain.forward_all(x)["global_feat"])


def test_bnneck_bias_is_frozen_at_zero_and_the_classifier_has_no_bias(model):
    assert isinstance(model.neck, nn.BatchNorm1d)
    assert not model.neck.bias.requires_grad and torch.equal(model.neck.bias, torch.zeros(512))
    assert torch.equal(model.neck.weight, torch.ones(512))
    assert model.classifier.bias is None
    assert model.classifier.weight.std().item() == pytest.approx(0.001, rel=0.1)

    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1, weight_decay=5e-4)
    out = model(torch.randn(8, 3, 64, 32))
    (out["logits"].logsumexp(1).mean() + out["global_feat"].pow(2).mean()).backward()
    assert model.neck.bias.grad is None
    # Every trainable parameter takes part in the train-mode outputs (DDP refuses unused ones).
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    optimizer.step()
    assert torch.equal(model.neck.bias, torch.zeros(512))


def test_channels_last_gives_the_same_outputs(model):
    x = torch.randn(2, 3, 64, 32)
    model.eval()
    with torch.no_grad():
        reference = model(x)
        cl = model.to(memory_format=torch.channels_last)
        assert cl.backbone.stem.conv1.weight.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(cl(x.to(memory_format=torch.channels_last)), reference, atol=1e-4, rtol=1e-4)


def test_freeze_backbone_stops_its_gradients_and_keeps_its_batchnorm_statistics(model):
    model.freeze_backbone(True)
    model.train()
    assert model.training and model.neck.training
    assert not any(m.training for m in model.backbone.modules())
    assert not any(p.requires_grad for p in model.backbone.parameters())
    stats = {k: v.clone() for k, v in model.backbone.state_dict().items() if "running" in k}
    neck_mean = model.neck.running_mean.clone()
    out = model(torch.randn(8, 3, 64, 32))
    out["logits"].sum().backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.classifier.weight.grad is not None and model.neck.weight.grad is not None
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in stats.items())
    assert not torch.equal(neck_mean, model.neck.running_mean)  # the neck still trains

    model.freeze_backbone(False)
    assert all(p.requires_grad for p in model.backbone.parameters())
    assert all(m.training for m in model.backbone.modules())
    model.eval()
    model.freeze_backbone(False)
    assert not any(m.training for m in model.backbone.modules())  # unfreezing keeps eval mode


def test_build_model_follows_the_config():
    m = build_model(make_config(backbone="resnet34", last_stride=2, neck_feat="before"), 3)
    assert m.backbone_name == "resnet34" and m.backbone.last_stride == 2 and m.neck_feat == "before"
    assert m.num_classes == 3 and m.classifier.out_features == 3
    with pytest.raises(ReidError, match="num_classes"):
        build_model(make_config(), 0)
