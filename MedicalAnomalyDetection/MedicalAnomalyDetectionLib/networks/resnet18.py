"""The frozen feature extractor of PathoSCOPE: a ResNet18 trunk (stem, layer1-3) with torchvision's parameter names,
and the paper's layer-2 + layer-3 feature aggregation.

A user's torchvision ResNet18 state dict (e.g. ImageNet weights saved with ``torch.save(model.state_dict(), f)``)
loads with :func:`load_resnet18_state`: tensors only (``weights_only=True``), every trunk key present with its exact
shape, and nothing but ``layer4.*`` / ``fc.*`` (unused here) beyond them.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..bundle import load_state_file
from ..errors import InputError

# Channels of layer2 and layer3: the aggregated feature has their sum.
FEATURE_CHANNELS = 128 + 256
# Keys of a full torchvision ResNet18 that the trunk does not use.
UNUSED_PREFIXES = ("layer4.", "fc.")


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock (same parameter names)."""

    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = (nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
                           if stride != 1 or inplanes != planes else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + identity)


class ResNet18Trunk(nn.Module):
    """ResNet18 up to layer3; returns (layer2, layer3) features at strides 8 and 16 of a (B, 3, H, W) input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = nn.Sequential(BasicBlock(64, 64, 1), BasicBlock(64, 64, 1))
        self.layer2 = nn.Sequential(BasicBlock(64, 128, 2), BasicBlock(128, 128, 1))
        self.layer3 = nn.Sequential(BasicBlock(128, 256, 2), BasicBlock(256, 256, 1))
        for module in self.modules():  # torchvision's initialisation
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        layer2 = self.layer2(self.layer1(x))
        return layer2, self.layer3(layer2)


def aggregate(layer2: torch.Tensor, layer3: torch.Tensor, neighbourhood: int = 3) -> torch.Tensor:
    """The paper's feature aggregation: each layer's features averaged over a ``neighbourhood`` x ``neighbourhood``
    patch (PatchCore's local aggregation), layer3 upsampled to layer2's grid, both concatenated: (B, 384, H/8, W/8)."""
    pool = lambda f: F.avg_pool2d(f, neighbourhood, 1, neighbourhood // 2, count_include_pad=False)  # noqa: E731
    upsampled = F.interpolate(pool(layer3), size=layer2.shape[-2:], mode="bilinear", align_corners=False)
    return torch.cat([pool(layer2), upsampled], dim=1)


def load_resnet18_state(path: Path) -> dict[str, torch.Tensor]:
    """A torchvision ResNet18 state dict from ``path`` as the trunk's weights, or an InputError that says which
    keys or shapes are wrong. Never unpickles objects."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"backbone weights file not found: {path}")
    state = load_state_file(path)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    expected = ResNet18Trunk().state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(k for k in set(state) - set(expected) if not k.startswith(UNUSED_PREFIXES))
    wrong = sorted(k for k in expected if k in state and state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        problems = [f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
                    if keys]
        raise InputError(f"backbone file {path} is not a torchvision ResNet18 state dict ({'; '.join(problems)})")
    return {k: state[k].float() if state[k].is_floating_point() else state[k] for k in expected}
