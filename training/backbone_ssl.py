"""``backbone``: a ResNet18 trunk pretrained self-supervised (SimCLR, Chen et al. 2020) on healthy training slices, as
a candidate default backbone for PathoSCOPE where ImageNet weights cannot be downloaded.

Two views of each slice (the shared augmentation with elastic deformation, a random crop of 60-100 % of the field of
view resized back, a random gamma), embedded by the trunk at the backbone's input size, pooled over the brain of the
view and projected by a 2-layer MLP; NT-Xent loss at temperature 0.2. The saved file is a torchvision-style ResNet18
state dict of the trunk, loadable with ``fit --method pathoscope --backbone``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from MedicalAnomalyDetectionLib.atomic import write_atomically, write_text_atomically
from MedicalAnomalyDetectionLib.augmentation import augment
from MedicalAnomalyDetectionLib.networks.resnet18 import ResNet18Trunk
from MedicalAnomalyDetectionLib.methods.pathoscope import PathoSCOPEConfig
from MedicalAnomalyDetectionLib.methods.runtime import autocast_for

from .slice_set import SliceSet


def _view(x: torch.Tensor, mask: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x, mask = augment(x, mask, generator, elastic_px=4.0)
    batch, _, height, width = x.shape
    scale = torch.rand(batch, generator=generator) * 0.4 + 0.6
    shift = (torch.rand(batch, 2, generator=generator) * 2 - 1) * (1 - scale).unsqueeze(1)
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, align_corners=False)
    mask = F.grid_sample(mask, grid, mode="nearest", align_corners=False)
    gamma = torch.exp((torch.rand(batch, 1, 1, 1, generator=generator) * 2 - 1) * 0.3)
    return x.clamp_min(0) ** gamma * mask, mask


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """SimCLR's loss: each view must pick its partner among the 2B - 1 others."""
    z = F.normalize(torch.cat([a, b]), dim=1)
    similarity = z @ z.t() / temperature
    similarity.fill_diagonal_(float("-inf"))
    count = a.shape[0]
    target = torch.cat([torch.arange(count, 2 * count), torch.arange(count)])
    return F.cross_entropy(similarity, target)


def pretrain_backbone(data: list[SliceSet], steps: int, batch_size: int, out: Path, seed: int = 0,
                      learning_rate: float = 1e-3) -> dict:
    """Train the trunk for ``steps`` steps on the union of ``data``; write ``out`` (state dict) and ``out``.json."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    slices = torch.from_numpy(np.concatenate([d.slices for d in data]).astype(np.float32)).unsqueeze(1)
    masks = torch.from_numpy(np.concatenate([d.masks for d in data]).astype(np.float32)).unsqueeze(1)
    config = PathoSCOPEConfig()
    size = config.backbone_size
    trunk = ResNet18Trunk().to(memory_format=torch.channels_last)
    head = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 128))
    optimiser = torch.optim.AdamW(list(trunk.parameters()) + list(head.parameters()), lr=learning_rate,
                                  weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=steps)
    device = torch.device("cpu")
    started, history = time.perf_counter(), []

    def embed(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        x = ((x - config.input_mean) / config.input_std).expand(-1, 3, -1, -1)
        with autocast_for(device, training=True):
            _, layer3 = trunk(x.contiguous(memory_format=torch.channels_last))
        weights = F.adaptive_avg_pool2d(mask, layer3.shape[-2:])
        pooled = (layer3.float() * weights).sum(dim=(2, 3)) / weights.sum(dim=(2, 3)).clamp_min(1e-6)
        return head(pooled)

    for step in range(steps):
        chosen = torch.randint(len(slices), (batch_size,), generator=generator)
        x, mask = slices[chosen], masks[chosen]
        loss = nt_xent(embed(*_view(x, mask, generator)), embed(*_view(x, mask, generator)))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        history.append(float(loss.detach()))
        if (step + 1) % 25 == 0:
            print(f"step {step + 1}/{steps}: NT-Xent {np.mean(history[-25:]):.3f} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in trunk.state_dict().items()}
    write_atomically(out, lambda file: torch.save(state, file))
    record = {"data": [f"{d.source['dataset']} {d.source['split']} ({len(d.slices)} healthy slices)" for d in data],
              "steps": steps, "batch_size": batch_size, "seed": seed, "learning_rate": learning_rate,
              "seconds": round(time.perf_counter() - started, 1), "final_loss": round(float(np.mean(history[-25:])), 4),
              "method": "SimCLR (NT-Xent, temperature 0.2), brain-pooled layer3 + 2-layer projection head"}
    write_text_atomically(out.with_suffix(".json"), json.dumps(record, indent=2) + "\n")
    return record
