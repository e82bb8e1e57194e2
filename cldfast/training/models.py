"""Model architectures for CLD proxy training and coreset evaluation.

:func:`build_model` builds one of :data:`ARCHS` (a small CNN for Fashion-MNIST-sized images
and the torchvision networks the CLD paper transfers coresets across) or any torchvision
classification model by name. Weights are always randomly initialised: nothing is
downloaded.

Small inputs (H and W <= 64, e.g. 32x32 CIFAR) get the usual "CIFAR stem" for the named
torchvision architectures, because the ImageNet stem would shrink a 32x32 image to 1x1
before the last stage. Inputs with other than 3 channels get a first convolution with the
right number of input channels.
"""

from __future__ import annotations

import copy
from typing import Any, Optional

import torch
from torch import nn

__all__ = ["ARCHS", "SMALL_CNN", "SmallCNN", "build_model", "resolve_model", "model_name",
           "num_parameters"]

#: The name :class:`SmallCNN` is built by (the default architecture,
#: :data:`cldfast.defaults.DEFAULT_ARCH`).
SMALL_CNN = "small-cnn"

#: Architectures with a tested recipe. Any other torchvision classification model name is
#: also accepted by :func:`build_model`, without the small-input stem.
ARCHS: tuple[str, ...] = (SMALL_CNN, "resnet18", "resnet34", "resnet50", "vgg16_bn", "vgg19_bn",
                          "densenet121")

# Inputs at most this large (in H and W) get the CIFAR stem.
_SMALL_INPUT = 64

_ALIASES = {"small_cnn": SMALL_CNN, "smallcnn": SMALL_CNN}


class SmallCNN(nn.Module):
    """A small, fast CNN for small grayscale or colour images (e.g. 1x28x28, 1x8x8).

    Three blocks of 3x3 conv, 2x2 max-pool, BN and ReLU with 16, 32 and 64 channels, then
    global average pooling and a linear classifier. A block skips its pool once the feature
    map is smaller than 4 pixels on its shorter side, so 8x8 inputs still work. Its
    accuracies on the embedded data: benchmarks/RESULTS.md.

    Input: float32 [B, C, H, W]; output: logits float32 [B, num_classes].
    """

    def __init__(self, in_channels: int, num_classes: int, input_hw: tuple[int, int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        side = min(input_hw)
        for width in (16, 32, 64):
            layers.append(nn.Conv2d(channels, width, 3, padding=1, bias=False))
            if side >= 4:
                # Pooling before BN and ReLU equals pooling after them while BN's scale is
                # positive (both are then monotone per channel) and costs them a quarter of
                # the work, which matters on CPU where this model is meant to run.
                layers.append(nn.MaxPool2d(2))
                side //= 2
            layers += [nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def num_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``model`` (only those with ``requires_grad`` if asked)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _new_conv(old: nn.Conv2d, in_channels: int, *, kernel_size: Optional[int] = None,
              stride: Optional[int] = None, padding: Optional[int] = None) -> nn.Conv2d:
    """A freshly initialised replacement for ``old`` with a different input side or stem."""
    if old.groups != 1:
        raise ValueError(f"cannot adapt a grouped first convolution ({old}) to {in_channels} "
                         "input channels")
    conv = nn.Conv2d(
        in_channels, old.out_channels,
        kernel_size=old.kernel_size if kernel_size is None else kernel_size,
        stride=old.stride if stride is None else stride,
        padding=old.padding if padding is None else padding,
        dilation=old.dilation, bias=old.bias is not None, padding_mode=old.padding_mode,
    )
    # The initialisation torchvision uses for the conv layers of these networks.
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def _adapt_resnet(model: nn.Module, in_channels: int, small: bool) -> nn.Module:
    if small:
        model.conv1 = _new_conv(model.conv1, in_channels, kernel_size=3, stride=1, padding=1)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = _new_conv(model.conv1, in_channels)
    return model


def _adapt_densenet(model: nn.Module, in_channels: int, small: bool) -> nn.Module:
    features = model.features
    if small:
        features.conv0 = _new_conv(features.conv0, in_channels, kernel_size=3, stride=1, padding=1)
        features.pool0 = nn.Identity()
    elif in_channels != 3:
        features.conv0 = _new_conv(features.conv0, in_channels)
    return model


def _adapt_vgg(model: nn.Module, in_channels: int, small: bool, input_hw: tuple[int, int],
               num_classes: int) -> nn.Module:
    features = model.features
    if in_channels != 3:
        features[0] = _new_conv(features[0], in_channels)
    if small:
        # Five 2x2 pools take 32x32 to 1x1; on smaller inputs (28x28, 8x8) the later pools
        # would reach 0x0, so those become identities.
        side = min(input_hw)
        for i, layer in enumerate(features):
            if isinstance(layer, nn.MaxPool2d):
                if side >= 2:
                    side //= 2
                else:
                    features[i] = nn.Identity()
        model.avgpool = nn.AdaptiveAvgPool2d(1)
        last = [m for m in features if isinstance(m, nn.Conv2d)][-1]
        model.classifier = nn.Linear(last.out_channels, num_classes)
    return model


def _adapt_first_conv(model: nn.Module, name: str, in_channels: int) -> nn.Module:
    """Replaces the first 3-channel Conv2d of a generic torchvision model."""
    for parent_name, parent in model.named_modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d) and child.in_channels == 3:
                setattr(parent, child_name, _new_conv(child, in_channels))
                return model
    raise ValueError(f"cannot adapt torchvision model {name!r} to {in_channels} input channels: "
                     "no 3-channel Conv2d found; convert the images to 3 channels instead")


def _check_args(num_classes: int, input_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1; got {num_classes!r}")
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(s, int) and s >= 1 for s in shape):
        raise ValueError(f"input_shape must be (C, H, W) with positive ints; got {input_shape!r}")
    return shape  # type: ignore[return-value]


def _timm_model(name: str, num_classes: int, in_channels: int, *, required: bool) -> nn.Module | None:
    """An untrained timm model, or None when timm is missing or has no such model (unless
    ``required``, which raises instead)."""
    try:
        import timm
    except ImportError:
        if required:
            raise ImportError(f"architecture 'timm/{name}' needs timm: pip install timm") from None
        return None
    if not timm.is_model(name):
        if required:
            raise ValueError(f"timm has no model {name!r} (see timm.list_models())")
        return None
    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels)


def build_model(arch: str, num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """Builds an untrained classifier.

    Args:
        arch: one of :data:`ARCHS` (case-insensitive), any name in
            ``torchvision.models.list_models(module=torchvision.models)``, or, when timm is
            installed, any timm model name (``timm.list_models()``); ``timm/NAME`` picks
            timm's model where both libraries have the name. timm models are built untrained
            (no download), with ``in_chans`` and ``num_classes`` set.
        num_classes: size of the output layer.
        input_shape: ``(C, H, W)`` of the input images.

    Returns:
        a module mapping float32 [B, C, H, W] to logits float32 [B, num_classes].

    Named ResNets, VGGs and DenseNet-121 use a CIFAR stem when H and W are <= 64 (3x3
    stride-1 first conv, no stem max-pool; VGG: global pooling and a single linear layer).
    Other torchvision models are built as torchvision defines them, with only the first
    convolution replaced when C != 3; some of them (e.g. ViTs) accept only their native
    image size.
    """
    if not isinstance(arch, str):
        raise TypeError(f"arch must be a string; got {arch!r}")
    in_channels, height, width = _check_args(num_classes, input_shape)
    key = arch.strip().lower()
    key = _ALIASES.get(key, key)
    if key == SMALL_CNN:
        return SmallCNN(in_channels, num_classes, (height, width))
    if key.startswith("timm/"):
        return _timm_model(arch.strip()[5:], num_classes, in_channels, required=True)

    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if key not in available:
        model = _timm_model(arch.strip(), num_classes, in_channels, required=False)
        if model is not None:
            return model
        raise ValueError(f"unknown architecture {arch!r}; expected one of {', '.join(ARCHS)}, any "
                         "torchvision classification model name (torchvision.models.list_models())"
                         ", or a timm model name when timm is installed (timm.list_models())")
    model = torchvision.models.get_model(key, weights=None, num_classes=num_classes)
    small = height <= _SMALL_INPUT and width <= _SMALL_INPUT
    if key.startswith("resnet") and key in ARCHS:
        return _adapt_resnet(model, in_channels, small)
    if key.startswith("densenet") and key in ARCHS:
        return _adapt_densenet(model, in_channels, small)
    if key.startswith("vgg") and key in ARCHS:
        return _adapt_vgg(model, in_channels, small, (height, width), num_classes)
    if in_channels != 3:
        model = _adapt_first_conv(model, key, in_channels)
    return model


def resolve_model(model: Any, num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """The module to train from what a user passes as ``model`` / ``arch``.

    * a name: :func:`build_model` (untrained);
    * an ``nn.Module``: a deep copy, so that every training run (the proxy, each coreset,
      each seed) starts from the same weights, the module as given;
    * a callable ``fn(num_classes, input_shape) -> nn.Module``: called once per training run.
    """
    if isinstance(model, str):
        return build_model(model, num_classes, input_shape)
    if isinstance(model, nn.Module):
        return copy.deepcopy(model)
    if callable(model):
        built = model(int(num_classes), tuple(int(v) for v in input_shape))
        if not isinstance(built, nn.Module):
            raise TypeError(f"the model factory {model_name(model)} returned "
                            f"{type(built).__name__}; it must return a torch.nn.Module")
        return built
    raise TypeError(f"model must be an architecture name, a torch.nn.Module or a factory "
                    f"fn(num_classes, input_shape) -> nn.Module; got {type(model).__name__}")


def model_name(model: Any) -> str:
    """A name for reports, scores files and resume-checkpoint configs: the architecture name, the
    module's class, or the factory's name."""
    if isinstance(model, str):
        return model
    if isinstance(model, nn.Module):
        return type(model).__name__
    return getattr(model, "__qualname__", None) or getattr(model, "__name__", None) or type(model).__name__
