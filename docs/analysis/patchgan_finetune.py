"""Issue 20's first candidate at the size this CPU allows: the bundled ``patchgan-flair`` reconstructor trained further
(its 600 GPU epochs as the start, a fresh discriminator) on the lgg_flair train slices, with and without an
augmentation meant to make it transfer to other scanners: a smooth multiplicative bias field, a gamma change of the
brain's contrast (the brain median kept at 0.5) and an in-plane blur (a coarser acquisition), on top of the training
loop's flips, rotations and scalings. Measured on lgg_flair val and nichart_wmh val only, the learned map with and
without the intensity prior; nothing here reads a test split. Results and reading: patchgan_finetune.md.

Run from the repository root (CACHE: ``python -m training prepare --dataset ../shared/data/lgg_flair --split train
--modality flair --out CACHE``); each fit ran on one CPU thread, the two side by side:
    python docs/analysis/patchgan_finetune.py fit CACHE transfer OUT_DIR/transfer EPOCHS
    python docs/analysis/patchgan_finetune.py fit CACHE plain OUT_DIR/plain EPOCHS
    python docs/analysis/patchgan_finetune.py validate bundle OUT_DIR/plain/weights.pt OUT_DIR/transfer/weights.pt
Weights trained further by the product's own command (``python -m training fit --init patchgan-flair ...``, then
``export``) are measured the same way, with their bundle's weights.pt, and their box smoothing swept:
    python docs/analysis/patchgan_finetune.py sweep BUNDLE_DIR/weights.pt
"""

import dataclasses
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]  # the repository: `training` runs from a clone, uninstalled
sys.path.insert(0, str(ROOT))

from MedicalAnomalyDetectionLib.augmentation import augment
from MedicalAnomalyDetectionLib.bundle import load_bundle
from MedicalAnomalyDetectionLib.methods import build_method, with_overrides
from MedicalAnomalyDetectionLib.methods.common import load_module
from MedicalAnomalyDetectionLib.methods.patchgan import BRAIN_MEDIAN, PatchGAN
from MedicalAnomalyDetectionLib.networks.patch_discriminator import PatchDiscriminator
from MedicalAnomalyDetectionLib.networks.unet import Reconstructor
from training.datasets import load_cases
from training.evaluation import score_split, summarise
from training.recipes.patchgan import PatchGANSettings, training_step
from training.slice_set import SliceSet

DATA = Path("../shared/data")
SOURCES = ("lgg_flair", "nichart_wmh")
MODEL = "patchgan-flair"
BATCH = 32
LEARNING_RATE = 5e-5  # a quarter of the original run's start, cosine to 0 over the epochs
SEED = 0


def scanner_change(x: torch.Tensor, mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(B, 1, H, W) normalised slices as another scanner might give them: a bias field exp(N(0, 0.1) on a 4 x 4 grid,
    bicubic), a gamma in exp(U(-0.25, 0.25)) about the brain median, and a Gaussian blur of sigma U(0, 1) px."""
    batch, _, height, width = x.shape
    coarse = torch.randn(batch, 1, 4, 4, generator=generator) * 0.1
    field = torch.exp(F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False))
    gamma = torch.exp(torch.rand(batch, 1, 1, 1, generator=generator) * 0.5 - 0.25)
    y = BRAIN_MEDIAN * (x.clamp_min(0) / BRAIN_MEDIAN) ** gamma * field
    sigma = float(torch.rand(1, generator=generator))
    if sigma > 0.2:
        taps = torch.arange(-2, 3, dtype=torch.float32)
        kernel = torch.exp(-taps ** 2 / (2 * sigma ** 2))
        kernel = kernel / kernel.sum()
        y = F.conv2d(F.pad(y, (2, 2, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
        y = F.conv2d(F.pad(y, (0, 0, 2, 2), mode="replicate"), kernel.view(1, 1, -1, 1))
    return (y * mask).clamp(-1, 3)


def fit() -> None:
    """Train the bundled reconstructor further for EPOCHS epochs; weights.pt and log.json are rewritten every
    epoch."""
    cache, variant, out, epochs = Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4]), int(sys.argv[5])
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    bundle = load_bundle(MODEL)
    config = PatchGAN.configure(bundle.card.hyperparameters)
    reconstructor = load_module(Reconstructor(config.widths, config.uncertainty), bundle, "reconstructor")
    discriminator = PatchDiscriminator(config.disc_widths)
    settings = PatchGANSettings(sign=config.sign, uncertainty=config.uncertainty)
    opt_r = torch.optim.Adam(reconstructor.parameters(), lr=LEARNING_RATE, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=settings.learning_rate, betas=(0.5, 0.999))
    data = SliceSet.load(cache)
    slices = torch.from_numpy(data.slices).float().unsqueeze(1)
    masks = torch.from_numpy(data.masks).float().unsqueeze(1)
    steps = slices.shape[0] // BATCH
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt_r, T_max=epochs * steps)
    generator = torch.Generator().manual_seed(SEED + 1)
    started, log = time.perf_counter(), []
    for epoch in range(epochs):
        order = torch.randperm(slices.shape[0], generator=generator)
        totals: dict[str, float] = {}
        for step in range(steps):
            chosen = order[step * BATCH:(step + 1) * BATCH]
            x, mask = augment(slices[chosen], masks[chosen], generator)
            if variant == "transfer":
                x = scanner_change(x, mask, generator)
            for key, value in training_step(x, mask, reconstructor, discriminator, opt_r, opt_d, config, settings,
                                            generator).items():
                totals[key] = totals.get(key, 0.0) + value / steps
            schedule.step()
        log.append({"epoch": epoch + 1, "minutes": round((time.perf_counter() - started) / 60, 1),
                    **{k: round(v, 5) for k, v in totals.items()}})
        print(log[-1], flush=True)
        torch.save({f"reconstructor.{k}": v for k, v in reconstructor.state_dict().items()}, out / "weights.pt")
        (out / "log.json").write_text(json.dumps(log, indent=1))


def validate() -> None:
    """Slice AUROC / voxel AUROC / pooled ⌈Dice⌉ on both validation sets for each weights file ("bundle": the
    bundled weights), the learned map alone and with the card's intensity prior (its other settings as bundled)."""
    print("| weights | map | lgg_flair val | nichart_wmh val |\n|---|---|---|---|")
    cache: dict = {}
    bar = load_bundle("intensity-flair")
    print("| – | intensity-flair (the bar) | " + " | ".join(
        _cell(build_method(bar, torch.device("cpu")), bar, source, cache) for source in SOURCES) + " |", flush=True)
    for weights in sys.argv[2:]:
        bundle = _with_weights(weights)
        for label, change in (("learned map alone", {"intensity_prior": 0.0}), ("with the intensity prior", {})):
            variant = with_overrides(bundle, change)
            method = build_method(variant, torch.device("cpu"))
            print(f"| {weights} | {label} | " + " | ".join(_cell(method, variant, source, cache) for source in SOURCES)
                  + " |", flush=True)


def sweep() -> None:
    """The map's box smoothing, the one inference setting left to choose for other weights: one weights file's
    learned map alone at box 3, 5, 7 and 9 px and with the intensity prior at 3, 5 and 7 px (4 hole shifts)."""
    bundle = _with_weights(sys.argv[2])
    print("| map | box | lgg_flair val | nichart_wmh val |\n|---|---|---|---|")
    cache: dict = {}
    for label, prior, boxes in (("learned map alone", 0.0, (3, 5, 7, 9)),
                                ("with the intensity prior", bundle.card.hyperparameters["intensity_prior"], (3, 5, 7))):
        for box in boxes:
            variant = with_overrides(bundle, {"map_smoothing": box, "intensity_prior": prior})
            method = build_method(variant, torch.device("cpu"))
            print(f"| {label} | {box} px | " + " | ".join(_cell(method, variant, source, cache) for source in SOURCES)
                  + " |", flush=True)


def _with_weights(weights: str):
    """The bundled model with its card's settings and ``weights`` (a weights file, or "bundle": its own)."""
    bundle = load_bundle(MODEL)
    if weights == "bundle":
        return bundle
    return dataclasses.replace(bundle, state_dict=torch.load(weights, map_location="cpu", weights_only=True))


def _cell(method, bundle, source: str, cache: dict) -> str:
    """"slice AUROC / voxel AUROC / ⌈Dice⌉" of ``method`` on ``source`` val."""
    summary = summarise(score_split(method, bundle, load_cases(DATA / source, "val", "flair"), cache=cache), None)
    return f"{summary['slice_auroc']:.3f} / {summary['voxel_auroc']:.3f} / {summary['best_dice']:.3f}"


if __name__ == "__main__":
    {"fit": fit, "validate": validate, "sweep": sweep}[sys.argv[1]]()
