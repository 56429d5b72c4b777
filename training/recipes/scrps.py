"""SCRPS's recipe (``methods/scrps/``): a StyleGAN2 trained on healthy slices (``training/stylegan_fit.py``), an
encoder for amortised inversion, and the healthy latent repository, in three stages:

1. **GAN**: ``--gan DIR`` takes the generator (its EMA copy) and the discriminator of a finished or paused
   ``python -m training.stylegan_fit`` run; without it a GAN of ``--gan-config`` is trained here for
   ``--gan-iterations`` (``RUN_DIR/gan``), which is what the tests do with the tiny configuration.
2. **Encoder** (image -> W+): each step, ``--encoder-batch`` generated slices with their known codes (W+ from the
   mapping network with style mixing, as in GAN training; loss: squared code error over the codes' variance) and as
   many real healthy slices (rotated within +-15 degrees; loss: Eq. 1 between the slice and the frozen generator's
   image of the predicted codes). Adam, cosine-decayed learning rate.
3. **Repository**: ``--repository-slices`` training slices drawn with the seed, each inverted by Eq. 1 from the
   encoder's codes for ``--repository-steps`` steps (the same procedure as test slices, with more steps).

Each stage keeps its state in the run folder (``gan/checkpoint.pt`` every 500 iterations, ``encoder.pt`` every 250
steps, ``repository.pt`` after every batch), so running the same command again resumes where a killed run stopped
and skips finished stages; another command on the same folder is refused (the data are recognised by their slice
count only). The run ends with ``checkpoint.pt`` holding the
modules a bundle takes (generator, encoder, perceptual network, repository) and ``run.json``.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from MedicalAnomalyDetectionLib.errors import InputError
from MedicalAnomalyDetectionLib.methods.runtime import autocast_for, choose_device
from MedicalAnomalyDetectionLib.methods.scrps import SCRPS, SCRPSConfig, perceptual_network
from MedicalAnomalyDetectionLib.methods.scrps.inversion import invert, inversion_loss
from MedicalAnomalyDetectionLib.networks.perceptual import (DiscriminatorFeatures, EncoderFeatures, LatentEncoder,
                                                            load_vgg16_state)
from MedicalAnomalyDetectionLib.networks.stylegan2 import CONFIGS, Generator, StyleGAN2Config
from MedicalAnomalyDetectionLib.run_record import RunRecord

from .. import stylegan_fit
from ..loop import CHECKPOINT, device_name, save_checkpoint
from ..slice_set import SliceSet
from . import Recipe, register
from .base import RecipeSettings, RunOptions
from .settings import option

ENCODER_FILE, REPOSITORY_FILE = "encoder.pt", "repository.pt"


@dataclass(frozen=True)
class EncoderSettings:
    steps: int = 4000
    batch_size: int = 8  # real slices per step (and as many generated ones)
    learning_rate: float = 1e-3
    latent_weight: float = 1.0  # weight of the code error on generated slices beside Eq. 1 on real ones
    rotation_deg: float = 15.0
    style_mixing: float = 0.9
    seed: int = 0
    save_every: int = 250


@dataclass(frozen=True)
class RepositorySettings:
    slices: int = 1200
    steps: int = 50
    batch_size: int = 32
    seed: int = 0


@dataclass(frozen=True, kw_only=True)
class SCRPSFitSettings(RecipeSettings):
    """SCRPS's fit: the GAN (trained here, or a finished StyleGAN2 run), the encoder, the repository, and the
    method's settings (the card's hyper-parameters)."""

    gan: Path | None = option(None, "run folder of python -m training.stylegan_fit (its generator and discriminator "
                                    "are used); without it a GAN is trained here")
    gan_config: str = option("reduced", choices=tuple(sorted(CONFIGS)))
    gan_iterations: int = option(8000)
    gan_batch_size: int = option(16)
    vgg16: Path | None = option(None, "a torchvision VGG16 state_dict file: the perceptual network of Eq. 1/2 and "
                                      "the map (the paper's choice); default: the feature trunk of the GAN's "
                                      "discriminator (no download)")
    encoder_steps: int = option(EncoderSettings.steps)
    encoder_batch: int = option(EncoderSettings.batch_size)
    encoder_lr: float = option(EncoderSettings.learning_rate)
    encoder_widths: tuple[int, ...] | None = option(None, "one per generator level")
    encoder_hidden: int = option(SCRPSConfig.encoder_hidden)
    repository_slices: int = option(RepositorySettings.slices)
    repository_steps: int = option(RepositorySettings.steps)
    refine_steps: int = option(SCRPSConfig.refine_steps, "Eq. 1 steps after the encoder at test time")
    refine_lr: float = option(SCRPSConfig.refine_lr)
    lambda_mse: float = option(SCRPSConfig.lambda_mse)
    k1: int = option(SCRPSConfig.k1)
    k2: int = option(SCRPSConfig.k2)
    l1: int | None = option(None, "default: round(L / 2)")
    l2: int | None = option(None, "default: L - 3")
    diffuse_normalisation: bool = option(False, "slice score = patch ranking of the map divided by the slice's "
                                                "diffuse (median patch) error")


# --------------------------------------------------------------------------------------------------------- the GAN

@dataclass
class GAN:
    """The frozen generator (EMA weights) and discriminator state of a StyleGAN2 run, and what that run did."""

    config: StyleGAN2Config
    generator: Generator
    discriminator: dict[str, torch.Tensor]
    record: dict
    fingerprint: str  # sha1 of the generator's weights: what the later stages were made with


def _fingerprint(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha1()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def load_gan(run_dir: Path, device: torch.device) -> GAN:
    """The generator of a ``training.stylegan_fit`` run folder (its checkpoint, and run.json when it has one)."""
    path = Path(run_dir) / stylegan_fit.CHECKPOINT
    if not path.is_file():
        raise InputError(f"--gan: {run_dir} has no {stylegan_fit.CHECKPOINT} of a StyleGAN2 run")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if "G_ema" not in state or "config" not in state:
        raise InputError(f"--gan: {path} is not a checkpoint of python -m training.stylegan_fit")
    config = StyleGAN2Config.from_dict(state["config"])
    generator = Generator(config)
    generator.load_state_dict(state["G_ema"])
    record_path = Path(run_dir) / "run.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    record = {k: v for k, v in record.items() if k != "history"}
    record.update(run_dir=str(run_dir), iterations=int(state["iteration"]), seconds=round(float(state["seconds"]), 1))
    return GAN(config, generator.to(device).eval().requires_grad_(False), state["D"], record,
               _fingerprint(state["G_ema"]))


def check_same_contrast(gan_record: dict, data: SliceSet, gan: str) -> None:
    """Refuse a GAN (its run record) trained on slices of another contrast than ``data``'s."""
    trained_on = str(gan_record.get("data", {}).get("source", {}).get("modality", "")).lower()
    given = str(data.source.get("modality", "")).lower()
    if trained_on and given and trained_on != given:
        raise InputError(f"{gan} was trained on {trained_on.upper()} slices; --data holds {given.upper()} slices "
                         f"({data.describe()})")


def train_gan(fit: SCRPSFitSettings, data: SliceSet, run_dir: Path, device: torch.device) -> GAN:
    """Train (or resume) a StyleGAN2 of ``gan_config`` in ``run_dir/gan``: the GAN stage of the recipe, used when no
    finished StyleGAN2 run is given."""
    gan_dir = run_dir / "gan"
    config = CONFIGS[fit.gan_config]
    settings = stylegan_fit.GANSettings(batch_size=fit.gan_batch_size, seed=fit.seed)
    checkpoint = gan_dir / stylegan_fit.CHECKPOINT
    if (gan_dir / "run.json").is_file():  # a GAN this run folder began on other slices is not continued on these
        check_same_contrast(json.loads((gan_dir / "run.json").read_text()), data, f"the GAN in {gan_dir}")
    trainer = (stylegan_fit.load_checkpoint(checkpoint, device, settings) if checkpoint.exists()
               else stylegan_fit.make_trainer(config, settings, device))
    if trainer.config != config:
        raise InputError(f"{gan_dir} holds another network than --gan-config {fit.gan_config}")
    if trainer.iteration < fit.gan_iterations:
        stylegan_fit.fit(trainer, data, gan_dir, fit.gan_iterations, checkpoint_every=min(500, fit.gan_iterations),
                         progress=False)
        record = stylegan_fit.run_record(trainer, data, data.describe(), torch.get_num_threads(),
                                         ["(scrps recipe)"])
        (gan_dir / "run.json").write_text(json.dumps(record, indent=2) + "\n")
    return load_gan(gan_dir, device)


# ------------------------------------------------------------------------------------------------------ the encoder

def _stage_state(path: Path, identity: str) -> dict | None:
    """A stage's saved state when it was made by the same command, None when there is none; else an InputError."""
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("identity") != identity:
        raise InputError(f"{path} was made with other settings, another GAN or other data; run the same command "
                         "again, or choose a new --run-dir")
    return state


def sample_codes(G: Generator, batch: int, generator: torch.Generator, style_mixing: float) -> torch.Tensor:
    """(B, L, D) W+ codes of random z, with style mixing from a random layer (as in GAN training), per slice."""
    cfg = G.config
    device = G.mapping_network.w_avg.device
    z = torch.randn(2, batch, cfg.z_dim, generator=generator).to(device)
    ws, ws2 = G.mapping(z[0]), G.mapping(z[1])
    cutoff = torch.randint(1, cfg.num_ws, (batch, 1, 1), generator=generator).to(device)
    mix = (torch.rand(batch, 1, 1, generator=generator) < style_mixing).to(device)
    layer = torch.arange(cfg.num_ws, device=device).view(1, -1, 1)
    return torch.where(mix & (layer >= cutoff), ws2, ws)


def train_encoder(gan: GAN, features: torch.nn.Module, config: SCRPSConfig, data: SliceSet,
                  settings: EncoderSettings, device: torch.device, path: Path, identity: str,
                  progress: bool = True) -> tuple[LatentEncoder, dict]:
    """Train the encoder (see the module docstring), resuming from ``path`` when it holds a paused run."""
    G = gan.generator
    torch.manual_seed(settings.seed)
    encoder = LatentEncoder(config.gan, config.encoder_widths, config.encoder_hidden).to(device)
    rng = torch.Generator().manual_seed(settings.seed)
    with torch.no_grad():
        encoder.w_mean.copy_(G.mean_w(seed=settings.seed).float())
        probe = sample_codes(G, 2000, torch.Generator().manual_seed(settings.seed + 1), settings.style_mixing)
        code_var = float(probe.var(dim=0).mean())
    optimiser = torch.optim.Adam(encoder.parameters(), lr=settings.learning_rate, betas=(0.9, 0.99))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=settings.steps)
    step, seconds_before, history = 0, 0.0, []
    state = _stage_state(path, identity)
    if state is not None:
        encoder.load_state_dict(state["encoder"])
        if bool(state["done"]):
            return encoder.eval(), json.loads(state["record"])
        optimiser.load_state_dict(state["optimiser"])
        schedule.load_state_dict(state["schedule"])
        rng.set_state(state["rng"])
        step, seconds_before, history = int(state["step"]), float(state["seconds"]), json.loads(state["history"])
    slices, masks = stylegan_fit.as_tensors(data, device)
    autocast = lambda: autocast_for(device, training=True)  # noqa: E731
    started, totals = time.perf_counter(), {}
    bar = tqdm(range(step, settings.steps), initial=step, total=settings.steps, unit="step", mininterval=30,
               disable=not progress, desc="encoder")

    def save(steps_done: int, done: bool, record: dict | None = None) -> None:
        save_checkpoint({"identity": identity, "encoder": encoder.state_dict(), "optimiser": optimiser.state_dict(),
                         "schedule": schedule.state_dict(), "rng": rng.get_state(), "step": steps_done,
                         "seconds": seconds_before + time.perf_counter() - started, "history": json.dumps(history),
                         "done": done, "record": json.dumps(record or {})}, path)

    encoder.train()
    for step in bar:
        with torch.no_grad():
            codes = sample_codes(G, settings.batch_size, rng, settings.style_mixing)
            with autocast():
                generated = G.synthesis(codes).float()
        loss_latent = (encoder(generated) - codes).square().mean() / code_var
        index = torch.randint(slices.shape[0], (settings.batch_size,), generator=rng).to(device)
        real = stylegan_fit.rotate(slices[index], masks[index], rng, settings.rotation_deg)
        with torch.no_grad(), autocast():
            target = [t.float() for t in features(real)]
        with autocast():
            loss_real = inversion_loss(features, target, real, G.synthesis(encoder(real)), config.lambda_mse).mean()
        loss = settings.latent_weight * loss_latent + loss_real
        if not torch.isfinite(loss):
            raise InputError(f"encoder training diverged at step {step} (loss {loss.item()}); lower --encoder-lr")
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        for key, value in (("latent", loss_latent.item()), ("eq1_real", loss_real.item())):
            totals[key] = totals.get(key, 0.0) + value
        if (step + 1) % settings.save_every == 0 or step + 1 == settings.steps:
            count = (step + 1) % settings.save_every or settings.save_every
            history.append({"step": step + 1, **{k: round(v / count, 5) for k, v in totals.items()}})
            totals = {}
            bar.set_postfix(history[-1])
            save(step + 1, False)
    record = {"steps": settings.steps, "seconds": round(seconds_before + time.perf_counter() - started, 1),
              "code_variance": round(code_var, 5), "history": history[-8:]}
    save(settings.steps, True, record)
    return encoder.eval(), record


# --------------------------------------------------------------------------------------------------- the repository

def repository_indices(count: int, settings: RepositorySettings) -> np.ndarray:
    """Which training slices go into the repository: ``settings.slices`` of ``count``, drawn with the seed, sorted."""
    chosen = np.random.default_rng(settings.seed).permutation(count)[:min(settings.slices, count)]
    return np.sort(chosen)


def build_repository(gan: GAN, features: torch.nn.Module, encoder: LatentEncoder, config: SCRPSConfig,
                     data: SliceSet, settings: RepositorySettings, device: torch.device, path: Path, identity: str,
                     progress: bool = True) -> tuple[torch.Tensor, dict]:
    """Eq. 1 over the chosen training slices, from the encoder's codes, in batches (resumable from ``path``)."""
    indices = repository_indices(data.slices.shape[0], settings)
    codes = torch.zeros(len(indices), config.gan.num_ws, config.gan.w_dim)
    losses = torch.zeros(len(indices))
    done, seconds_before = 0, 0.0
    state = _stage_state(path, identity)
    if state is not None:
        codes, losses, done, seconds_before = state["codes"], state["losses"], int(state["done"]), float(state["seconds"])
    autocast = lambda: autocast_for(device)  # noqa: E731
    started = time.perf_counter()
    bar = tqdm(total=len(indices), initial=done, unit="slice", mininterval=30, disable=not progress,
               desc="repository")
    while done < len(indices):
        chosen = indices[done:done + settings.batch_size]
        x = torch.from_numpy(data.slices[chosen].astype(np.float32)).unsqueeze(1).to(device)
        with torch.no_grad(), autocast():
            start = encoder(x).float()
        found = invert(gan.generator, features, x, start, settings.steps, config.refine_lr, config.lambda_mse,
                       autocast=lambda: autocast_for(device, training=True))[settings.steps]
        with torch.no_grad(), autocast():
            target = [t.float() for t in features(x)]
            final = inversion_loss(features, target, x, gan.generator.synthesis(found), config.lambda_mse)
        codes[done:done + len(chosen)] = found.cpu()
        losses[done:done + len(chosen)] = final.float().cpu()
        done += len(chosen)
        bar.update(len(chosen))
        save_checkpoint({"identity": identity, "codes": codes, "losses": losses, "done": done,
                         "indices": torch.from_numpy(indices), "seconds": seconds_before + time.perf_counter() - started},
                        path)
    seconds = seconds_before + time.perf_counter() - started
    record = {"slices": len(indices), "of": int(data.slices.shape[0]), "steps": settings.steps,
              "seconds": round(seconds, 1), "eq1_loss_mean": round(float(losses.mean()), 5),
              "eq1_loss_median": round(float(losses.median()), 5)}
    return codes, record


# ------------------------------------------------------------------------------------------------------- the recipe

def perceptual_state(config: SCRPSConfig, gan: GAN, encoder: LatentEncoder | None,
                     vgg16: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """The weights of the perceptual network the card names."""
    if config.perceptual == "vgg16":
        return vgg16
    if config.perceptual == "encoder":
        return EncoderFeatures(config.gan, config.encoder_widths, config.encoder_hidden).state_dict() \
            if encoder is None else {k: v for k, v in encoder.state_dict().items() if k.startswith("stages.")}
    keep = set(DiscriminatorFeatures(config.gan).state_dict())
    return {k: v for k, v in gan.discriminator.items() if k in keep}


def method_config(fit: SCRPSFitSettings, gan: StyleGAN2Config) -> SCRPSConfig:
    """The method's configuration (the card's hyper-parameters) that ``fit`` gives with generator ``gan``."""
    widths = fit.encoder_widths or tuple(min(128, 32 * 2 ** level) for level in range(gan.levels))
    return SCRPSConfig(gan=gan, perceptual="vgg16" if fit.vgg16 else "discriminator", encoder_widths=widths,
                       encoder_hidden=fit.encoder_hidden, lambda_mse=fit.lambda_mse, refine_steps=fit.refine_steps,
                       refine_lr=fit.refine_lr, k1=fit.k1, k2=fit.k2, l1=fit.l1, l2=fit.l2,
                       ranking=replace(SCRPSConfig.ranking, diffuse_normalisation=fit.diffuse_normalisation))


@register
class SCRPSRecipe(Recipe):
    name = SCRPS.name
    help = "SCRPS: StyleGAN2 latent-code retrieval and partial swap (Wei et al. 2025), with an encoder"
    Settings = SCRPSFitSettings
    run_options = ("device", "threads", "quiet")

    @classmethod
    def fit(cls, settings: SCRPSFitSettings, data: SliceSet | None, run_dir: Path, run: RunOptions = RunOptions(),
            command: str = "") -> RunRecord:
        if run.threads:
            torch.set_num_threads(run.threads)
        device = choose_device(run.device)
        vgg16 = load_vgg16_state(settings.vgg16) if settings.vgg16 else None  # refused before any work if malformed
        started = time.perf_counter()
        gan = load_gan(settings.gan, device) if settings.gan else train_gan(settings, data, run_dir, device)
        check_same_contrast(gan.record, data, f"--gan {settings.gan}")
        if tuple(data.slices.shape[1:]) != tuple(gan.config.size):
            raise InputError(f"the slices of {data.describe()} are {tuple(data.slices.shape[1:])}, the generator makes "
                             f"{tuple(gan.config.size)}")
        config = method_config(settings, gan.config)
        encoder_settings = EncoderSettings(steps=settings.encoder_steps, batch_size=settings.encoder_batch,
                                           learning_rate=settings.encoder_lr, seed=settings.seed)
        repository_settings = RepositorySettings(slices=settings.repository_slices, steps=settings.repository_steps,
                                                 seed=settings.seed)
        features = perceptual_network(config)
        features.load_state_dict(perceptual_state(config, gan, None, vgg16))
        features = features.to(device).eval().requires_grad_(False)
        inversion = {k: v for k, v in config.to_dict().items()
                     if k in ("gan", "perceptual", "encoder_widths", "encoder_hidden", "lambda_mse", "refine_lr")}
        identity = {"gan": gan.fingerprint, "inversion": inversion, "slices": int(data.slices.shape[0]),
                    "vgg16": None if vgg16 is None else _fingerprint(vgg16)}
        encoder_identity = json.dumps({**identity, "encoder": asdict(encoder_settings)}, sort_keys=True)
        encoder, encoder_record = train_encoder(gan, features, config, data, encoder_settings, device,
                                                run_dir / ENCODER_FILE, encoder_identity, not run.quiet)
        repository_identity = json.dumps({**identity, "encoder": asdict(encoder_settings),
                                          "repository": asdict(repository_settings)}, sort_keys=True)
        codes, repository_record = build_repository(gan, features, encoder, config, data, repository_settings,
                                                    device, run_dir / REPOSITORY_FILE, repository_identity,
                                                    not run.quiet)
        perceptual = perceptual_state(config, gan, encoder, vgg16)
        if config.perceptual == "vgg16":  # 14.7 M parameters: half precision keeps the bundle near 50 MB
            perceptual = {k: v.half() for k, v in perceptual.items()}
        modules = {"generator": gan.generator.state_dict(), "encoder": encoder.state_dict(),
                   "perceptual": perceptual, "repository": {"codes": codes.float()}}
        save_checkpoint({"modules": modules}, run_dir / CHECKPOINT)
        seconds = float(gan.record.get("seconds", 0.0)) + encoder_record["seconds"] + repository_record["seconds"]
        notes = {"gan": gan.record, "encoder": encoder_record, "repository": repository_record,
                 "perceptual_network": "user-supplied torchvision VGG16 " + str(settings.vgg16) if vgg16 is not None
                 else f"{config.perceptual} features (no download)",
                 "this_session_seconds": round(time.perf_counter() - started, 1)}
        return RunRecord(method=SCRPS.name, config=config.to_dict(),
                         settings={"encoder": asdict(encoder_settings), "repository": asdict(repository_settings),
                                   "gan": gan.record.get("settings", {})},
                         source=data.source, data=data.describe(), seed=settings.seed, device=device_name(device),
                         seconds=round(seconds, 1), done=encoder_settings.steps, planned=encoder_settings.steps,
                         command=command, losses=encoder_record.get("history", [])[-5:], notes={"stages": notes})
