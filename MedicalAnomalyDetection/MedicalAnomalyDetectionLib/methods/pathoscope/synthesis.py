"""Local pathological images (paper Section 2.2): textures blended into healthy slices under Perlin-noise masks
inside the brain.

The paper takes textures from DTD, which is not available here. Sources used instead, one drawn per synthetic lesion:
``procedural`` (fractal Perlin noise), ``package`` (the brick, grass and gravel photographs shipped with
scikit-image, when it is installed), ``healthy`` (a shifted, rotated other reference slice: real tissue texture out of
place) and ``folder`` (every image in a user's texture folder). A texture is standardised, given a random intensity
level and contrast on the normalised scale (brain median 0.5), and blended as x (1 - M) + M ((1 - beta) T + beta x)
with beta ~ U(0, 0.8), as in DRAEM/GLASS.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from ...augmentation import augment
from ...errors import InputError

PACKAGE_TEXTURES = ("brick.png", "grass.png", "gravel.png")
TEXTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
# Smallest synthetic lesion, in model-grid pixels (one 4 x 4 feature cell).
MIN_LESION_PIXELS = 16


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def perlin(shape: tuple[int, int], resolution: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """2-D Perlin gradient noise of ``shape`` with ``resolution`` lattice cells per axis (values about -1..1)."""
    height, width = shape
    ry, rx = resolution
    angles = 2 * math.pi * torch.rand(ry + 1, rx + 1, generator=generator)
    gradients = torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)
    y = torch.arange(height) * ry / height
    x = torch.arange(width) * rx / width
    yi, xi = y.floor().long(), x.floor().long()
    fy, fx = (y - yi)[:, None], (x - xi)[None, :]

    def corner(dy: int, dx: int) -> torch.Tensor:
        g = gradients[yi + dy][:, xi + dx]
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    fade = lambda t: 6 * t ** 5 - 15 * t ** 4 + 10 * t ** 3  # noqa: E731
    wy, wx = fade(fy), fade(fx)
    top = corner(0, 0) * (1 - wx) + corner(0, 1) * wx
    bottom = corner(1, 0) * (1 - wx) + corner(1, 1) * wx
    return (top * (1 - wy) + bottom * wy) * math.sqrt(2)


def perlin_mask(brain: torch.Tensor, generator: torch.Generator, attempts: int = 8) -> torch.Tensor:
    """A binary blob mask inside ``brain`` (H, W): Perlin noise at a random power-of-two resolution, thresholded at
    0.5 (DRAEM's rule); empty only if ``attempts`` draws all miss the brain."""
    shape = tuple(brain.shape)
    for _ in range(attempts):
        resolution = tuple(2 ** int(torch.randint(1, 5, (), generator=generator)) for _ in range(2))
        mask = (perlin(shape, resolution, generator) > 0.5) & brain.bool()
        if int(mask.sum()) >= MIN_LESION_PIXELS:
            return mask.float()
    return torch.zeros(shape)


def fractal_noise(shape: tuple[int, int], generator: torch.Generator, octaves: int = 4) -> torch.Tensor:
    """Procedural texture: Perlin noise summed over ``octaves`` doubling resolutions."""
    base = 2 ** int(torch.randint(1, 4, (), generator=generator))
    return sum(perlin(shape, (base * 2 ** o, base * 2 ** o), generator) / 2 ** o for o in range(octaves))


def read_texture(path: Path) -> torch.Tensor:
    """A grey-level texture image (H, W) float32 in 0..1, or an InputError naming the unreadable file."""
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise InputError(f"texture {path} is not a readable image: {str(error).strip().splitlines()[-1][:120]}") \
            from None
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    if image.GetNumberOfComponentsPerPixel() > 1:
        array = array.mean(axis=-1)
    array = np.squeeze(array)
    if array.ndim != 2 or min(array.shape) < 16 or not np.isfinite(array).all():
        raise InputError(f"texture {path} is not a 2-D image of at least 16 x 16 finite pixels")
    low, high = float(array.min()), float(array.max())
    if high <= low:
        raise InputError(f"texture {path} is constant")
    return torch.from_numpy((array - low) / (high - low))


def package_texture_paths() -> list[Path]:
    """scikit-image's bundled texture photographs, where scikit-image is installed (found without importing it)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return []
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    return [folder / name for name in PACKAGE_TEXTURES if (folder / name).is_file()]


def folder_textures(folder: Path) -> list[torch.Tensor]:
    """Every image of a user's texture folder; an unreadable one is an error (not silently skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"texture folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise InputError(f"texture folder {folder} holds no files")
    unknown = [p.name for p in files if p.suffix.lower() not in TEXTURE_SUFFIXES]
    if unknown:
        raise InputError(f"texture folder {folder} holds files that are not images ({', '.join(unknown[:3])}); "
                         f"use {', '.join(TEXTURE_SUFFIXES)}")
    return [read_texture(p) for p in files]


class TextureBank:
    """Draws (H, W) textures from the available sources; ``healthy`` draws from the reference slices themselves."""

    def __init__(self, references: torch.Tensor, reference_masks: torch.Tensor,
                 texture_dir: Path | None = None) -> None:
        self.references, self.reference_masks = references, reference_masks
        self.images = {"package": [read_texture(p) for p in package_texture_paths()],
                       "folder": folder_textures(texture_dir) if texture_dir is not None else []}
        self.sources = ["procedural", "healthy"] + [name for name, images in self.images.items() if images]

    def draw(self, shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
        source = self.sources[int(torch.randint(len(self.sources), (), generator=generator))]
        if source == "procedural":
            return fractal_noise(shape, generator)
        if source == "healthy":
            index = int(torch.randint(len(self.references), (), generator=generator))
            moved, _ = augment(self.references[index][None, None], self.reference_masks[index][None, None].float(),
                               generator)
            shift = [int(torch.randint(-s // 4, s // 4 + 1, (), generator=generator)) for s in shape]
            return torch.roll(moved[0, 0], shift, dims=(0, 1))
        images = self.images[source]
        image = images[int(torch.randint(len(images), (), generator=generator))]
        scale = _uniform(generator, 0.5, 2.0)
        size = [max(shape[0], int(image.shape[0] * scale)), max(shape[1], int(image.shape[1] * scale))]
        resized = F.interpolate(image[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
        top = int(torch.randint(size[0] - shape[0] + 1, (), generator=generator))
        left = int(torch.randint(size[1] - shape[1] + 1, (), generator=generator))
        return resized[top:top + shape[0], left:left + shape[1]]


def local_pathology(x: torch.Tensor, brain: torch.Tensor, textures: TextureBank,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A local pathological image from healthy (H, W) slice ``x``: returns (x_p, M_p), M_p the blended region."""
    mask = perlin_mask(brain, generator)
    texture = textures.draw(tuple(x.shape), generator)
    inside = brain.bool()
    spread = texture[inside].std() if inside.any() else texture.std()
    texture = (texture - texture[inside].mean() if inside.any() else texture) / spread.clamp_min(1e-6)
    level, contrast = _uniform(generator, 0.1, 1.5), _uniform(generator, 0.02, 0.25)
    texture = level + contrast * texture
    beta = _uniform(generator, 0.0, 0.8)
    blended = x * (1 - mask) + mask * ((1 - beta) * texture + beta * x)
    return blended * brain, mask
