"""Tests of cldfast.models: every named architecture builds and maps images to logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cldfast.training.models import ARCHS, SmallCNN, build_model, num_parameters


def logits(model: nn.Module, shape: tuple[int, int, int], batch: int = 2) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(torch.randn(batch, *shape))


@pytest.mark.parametrize("arch", ARCHS)
def test_every_arch_builds_for_cifar_shape(arch):
    torch.manual_seed(0)
    model = build_model(arch, 10, (3, 32, 32))
    out = logits(model, (3, 32, 32))
    assert out.shape == (2, 10) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("arch", ["resnet18", "densenet121"])
def test_cifar_stem_keeps_resolution(arch):
    model = build_model(arch, 10, (3, 32, 32))
    first = model.conv1 if arch.startswith("resnet") else model.features.conv0
    assert first.kernel_size == (3, 3) and first.stride == (1, 1)
    assert isinstance(model.maxpool if arch.startswith("resnet") else model.features.pool0, nn.Identity)


def test_imagenet_stem_kept_for_large_inputs():
    model = build_model("resnet18", 5, (3, 96, 96))
    assert model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2)
    assert isinstance(model.maxpool, nn.MaxPool2d)
    assert logits(model, (3, 96, 96)).shape == (2, 5)


def test_vgg_small_input_head():
    model = build_model("vgg16_bn", 100, (3, 32, 32))
    assert isinstance(model.classifier, nn.Linear)
    assert model.classifier.in_features == 512 and model.classifier.out_features == 100
    assert logits(model, (3, 32, 32)).shape == (2, 100)


@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 8, 8), (3, 32, 32)])
def test_small_cnn_shapes(shape):
    model = build_model("small-cnn", 10, shape)
    assert isinstance(model, SmallCNN)
    assert logits(model, shape, batch=3).shape == (3, 10)


def test_small_cnn_trains_one_step():
    torch.manual_seed(0)
    model = build_model("small_cnn", 10, (1, 28, 28))
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert num_parameters(model) < 200_000


@pytest.mark.parametrize("arch", ["resnet18", "vgg16_bn", "densenet121"])
def test_grayscale_adaptation(arch):
    model = build_model(arch, 10, (1, 28, 28))
    assert logits(model, (1, 28, 28)).shape == (2, 10)


def test_grayscale_resnet_first_conv():
    model = build_model("resnet18", 10, (1, 28, 28))
    assert model.conv1.in_channels == 1
    big = build_model("resnet18", 10, (1, 96, 96))
    assert big.conv1.in_channels == 1 and big.conv1.kernel_size == (7, 7)


def test_generic_torchvision_model():
    model = build_model("mobilenet_v3_small", 7, (3, 64, 64))
    assert logits(model, (3, 64, 64)).shape == (2, 7)
    gray = build_model("mobilenet_v3_small", 7, (1, 64, 64))
    assert logits(gray, (1, 64, 64)).shape == (2, 7)


def test_unknown_arch_error_text():
    with pytest.raises(ValueError) as info:
        build_model("resnet-9000", 10, (3, 32, 32))
    msg = str(info.value)
    assert "resnet-9000" in msg and "torchvision" in msg
    for arch in ARCHS:
        assert arch in msg


@pytest.mark.parametrize("num_classes,shape", [(0, (3, 32, 32)), (10, (3, 32)), (10, (3, 0, 32))])
def test_bad_arguments(num_classes, shape):
    with pytest.raises(ValueError):
        build_model("small-cnn", num_classes, shape)


def test_num_parameters():
    model = nn.Linear(3, 2)
    assert num_parameters(model) == 8
    model.bias.requires_grad_(False)
    assert num_parameters(model, trainable_only=True) == 6


def test_timm_models_by_name(tmp_path):
    timm = pytest.importorskip("timm")
    from cldfast.training.models import build_model

    m = build_model("resnet10t", 7, (1, 28, 28))  # timm-only name, one input channel
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 7)
    m = build_model("timm/resnet18", 5, (3, 32, 32))  # forced from timm
    assert isinstance(m, timm.models.ResNet) and m(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    with pytest.raises(ValueError, match="timm has no model"):
        build_model("timm/not-a-model", 5, (3, 32, 32))
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("not-a-model-anywhere", 5, (3, 32, 32))


@pytest.mark.slow
def test_timm_model_trains_in_cldfast_track(tmp_path):
    pytest.importorskip("timm")
    from cldfast.cli import main
    from cldfast.io import load_scores

    out = tmp_path / "track"
    rc = main(["track", "--dataset", "digits", "--arch", "resnet10t", "--epochs", "3",
               "--batch-size", "128", "--lr", "0.05", "--quiet", "--out", str(out)])
    assert rc == 0
    sf = load_scores(next(out.glob("*.npz")) if out.is_dir() else out)
    assert sf.metadata.get("arch") == "resnet10t" and np.isfinite(sf.scores).any()
