"""Pictures of a result: axial slices of the input with the anomaly heat map and the label outline (and, when
given, the reference lesion outline), in radiological display (patient's right on the left)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
from skimage.measure import find_contours  # noqa: E402


def _axial(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.DICOMOrient(image, "LPS"))


def render_result(image: sitk.Image, anomaly_map: sitk.Image, label: sitk.Image, path: Path,
                  truth: sitk.Image | None = None, slices: int = 3, title: str = "") -> None:
    """Save ``slices`` axial views around the most anomalous slice: grey input, heat map, label outline (cyan) and
    reference outline (green, dashed)."""
    volume, heat, labels = _axial(image), _axial(anomaly_map), _axial(label) > 0
    reference = _axial(truth) > 0 if truth is not None else None
    centre = int(np.argmax(heat.reshape(heat.shape[0], -1).sum(axis=1)))
    step = max(3, volume.shape[0] // 12)
    chosen = [min(volume.shape[0] - 1, max(0, centre + step * (i - slices // 2))) for i in range(slices)]
    spacing = sitk.DICOMOrient(image, "LPS").GetSpacing()
    aspect = spacing[1] / spacing[0]
    low, high = np.percentile(volume[volume != 0] if (volume != 0).any() else volume, [1, 99.5])
    heat_max = max(float(np.percentile(heat[heat > 0], 99.5)) if (heat > 0).any() else 1.0, 1e-6)
    figure, axes = plt.subplots(1, slices, figsize=(3.2 * slices, 3.6), dpi=110, squeeze=False)
    for axis, k in zip(axes[0], chosen):
        axis.imshow(volume[k], cmap="gray", vmin=low, vmax=high, aspect=aspect)
        axis.imshow(np.ma.masked_less_equal(heat[k], 0.05 * heat_max), cmap="hot", vmin=0, vmax=heat_max,
                    alpha=0.6, aspect=aspect)
        for contour in find_contours(labels[k].astype(float), 0.5):
            axis.plot(contour[:, 1], contour[:, 0], color="cyan", linewidth=1.0)
        if reference is not None:
            for contour in find_contours(reference[k].astype(float), 0.5):
                axis.plot(contour[:, 1], contour[:, 0], color="lime", linewidth=0.8, linestyle="--")
        axis.set_title(f"axial slice {k}", fontsize=8)
        axis.axis("off")
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
