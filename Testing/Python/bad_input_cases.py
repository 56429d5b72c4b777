"""The bad-input table: one row per damaged, odd or hostile input, with what the user sees and what is guaranteed.

``test_bad_inputs.py`` runs every row through ``mad-detect`` and, where the row has a node form, through the Slicer
Logic on a real MRML scene; ``docs/bad_inputs.py`` writes ``docs/bad_inputs.md`` from the same rows. A refused row's
``sees`` is a fragment of the one-line error that the test asserts; a handled row's ``check`` asserts what it says.
"""

from __future__ import annotations

import errno
import json
import locale
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import SimpleITK as sitk
import torch

from MedicalAnomalyDetectionLib.bundle import CARD_FILE, WEIGHTS_FILE, sha256_of
from MedicalAnomalyDetectionLib.networks.autoencoder import AutoencoderConfig

from conftest import head_array, make_image

REFUSED = "exit status 1 with this one line; the output folder is left as it was; the input is unchanged"
ON_GRID = "exit status 0; map and label map on the input grid (size, spacing, origin, direction), no NaN"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
BLOB = (12, 20, 26)  # K, J, I of head_array()'s bright cube


@dataclass(frozen=True)
class Volume:
    """An input as voxels and geometry (LPS, as SimpleITK), written as a file or added to a scene as a node."""

    array: np.ndarray
    spacing: tuple[float, float, float] = (3.0, 3.0, 3.0)
    direction: tuple[float, ...] = (1, 0, 0, 0, 1, 0, 0, 0, 1)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    suffix: str = ".nii.gz"
    name: str = "case"

    def image(self) -> sitk.Image:
        return make_image(self.array, self.spacing, self.origin, self.direction)

    def write(self, folder: Path) -> Path:
        path = folder / f"{self.name}{self.suffix}"
        sitk.WriteImage(self.image(), str(path))
        return path

    def node(self, scene):
        from slicer_fixtures import add_volume

        return add_volume(scene, self.array, self.name, spacing=self.spacing,
                          origin_ras=tuple(LPS_TO_RAS @ np.array(self.origin)),
                          directions_ras=LPS_TO_RAS @ np.array(self.direction, float).reshape(3, 3))


@dataclass
class Outcome:
    """What a handled row produced, from either face: the anomaly map (K, J, I), the device used, the run's warnings
    (report.json / DetectionOutputs) and all the text the user saw (stderr / log), and the bundle that ran."""

    map: np.ndarray
    device: str
    warnings: list[str]
    text: str
    bundle: Any


@dataclass(frozen=True)
class Case:
    """One row. ``make(folder, variant)`` writes the input under ``folder`` and returns mad-detect's arguments (input
    first); ``node(scene, variant)`` is the row's Slicer form (a volume node and ``process`` keyword arguments), if
    any; ``bundle(folder, tiny, variant)`` turns the tiny Patch-GAN bundle into the row's model (else the intensity
    bundle runs); ``patch(monkeypatch, variant)`` sets up the environment (a full disk, a GPU out of memory);
    ``check(outcome, variant)`` asserts what a handled row promises beyond the input grid."""

    key: str
    input: str
    sees: str
    guaranteed: str
    refused: bool
    make: Callable[[Path, Any], list[str]] | None = None
    node: Callable[[Any, Any], tuple[Any, dict]] | None = None
    node_sees: str | None = None  # the Slicer Logic's message fragment, where it differs
    bundle: Callable[[Path, Path, Any], Path] | None = None
    patch: Callable[[Any, Any], None] | None = None
    check: Callable[[Outcome, Any], None] | None = None
    removes: tuple[str, ...] = ()  # files (relative to the case folder) a refused row removes on purpose
    variants: tuple = (None,)


def head(**geometry) -> Volume:
    return Volume(head_array(), **geometry)


def _file(volume: Callable[[Any], Volume]) -> Callable[[Path, Any], list[str]]:
    return lambda folder, variant: [str(volume(variant).write(folder))]


def _node(volume: Callable[[Any], Volume]) -> Callable[[Any, Any], tuple[Any, dict]]:
    return lambda scene, variant: (volume(variant).node(scene), {})


def _values(change: Callable[[np.ndarray], np.ndarray]) -> Callable[[Any], Volume]:
    return lambda variant: Volume(change(head_array()))


_head_file = _file(lambda variant: head())
_head_node = _node(lambda variant: head())


# --- files SimpleITK alone would read wrongly -----------------------------------------------------------------------

def _truncated(folder: Path, cut: float) -> list[str]:
    whole = head().write(folder).read_bytes()
    path = folder / "truncated.nii.gz"
    path.write_bytes(whole[:int(len(whole) * cut)] if cut > 0 else whole[:cut])
    return [str(path)]


def _short_nifti(folder: Path, variant: Any) -> list[str]:
    path = head(suffix=".nii").write(folder)
    path.write_bytes(path.read_bytes()[:-1000])
    return [str(path)]


def _nifti_spacing(value: float) -> Callable[[Path, Any], list[str]]:
    """A NIfTI whose header says ``value`` mm for the first voxel spacing (pixdim[1])."""
    def make(folder: Path, variant: Any) -> list[str]:
        path = head(suffix=".nii").write(folder)
        data = bytearray(path.read_bytes())
        struct.pack_into("<f", data, 80, value)
        path.write_bytes(bytes(data))
        return [str(path)]
    return make


def _written(name: str, image: Callable[[], sitk.Image]) -> Callable[[Path, Any], list[str]]:
    def make(folder: Path, variant: Any) -> list[str]:
        sitk.WriteImage(image(), str(folder / name))
        return [str(folder / name)]
    return make


def _empty_file(folder: Path, variant: Any) -> list[str]:
    (folder / "empty.nii.gz").write_bytes(b"")
    return [str(folder / "empty.nii.gz")]


def _vector_node(scene, variant: Any) -> tuple[Any, dict]:
    import slicer

    node = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "rgb")
    slicer.util.updateVolumeFromArray(node, np.stack([head_array()] * 3, axis=-1))
    return node, {}


# --- voxel values ---------------------------------------------------------------------------------------------------

NON_FINITE_AT = ((3, 4, 5), (12, 20, 20), (20, 30, 10))  # K, J, I: a corner-side voxel, one in tissue, one more


def _a_few_non_finite(variant: str | None) -> Volume:
    array = head_array()
    for (k, j, i), value in zip(NON_FINITE_AT, (np.nan, np.inf, -np.inf)):
        array[k, j, i] = value
    return Volume(array, suffix=variant or ".nii.gz")


def _non_finite_repaired(outcome: Outcome, variant: str | None) -> None:
    assert [w for w in outcome.warnings if "3 NaN/Inf voxels (0.01%) were read as the background value 0" in w]
    clean = head_array()
    for k, j, i in NON_FINITE_AT:
        clean[k, j, i] = 0.0
    np.testing.assert_allclose(outcome.map, _intensity_map(Volume(clean).image(), outcome.bundle), atol=1e-4)


def _mostly_nan(variant: Any) -> Volume:
    array = head_array()
    array.reshape(-1)[:int(0.6 * array.size)] = np.nan
    return Volume(array)


def _integers(variant: str) -> Volume:
    """head_array()'s voxels in an integer type, at its edge: int16 over its whole range, uint16 saturated at 65535
    in the lesion, int32 and uint64 just under their top."""
    base = head_array().round().astype(np.int64)
    array = {"int16 full range": lambda: np.clip((base - 125) * 262, -32768, 32767).astype(np.int16),
             "uint16 saturated": lambda: np.clip(base * 300, 0, 65535).astype(np.uint16),
             "int32 near 2^31": lambda: (base + (2**31 - 400)).astype(np.int32),
             "uint64 near 2^63": lambda: base.astype(np.uint64) + np.uint64(2**63)}[variant]()
    return Volume(array)


def _intensity_map(image: sitk.Image, bundle) -> np.ndarray:
    from MedicalAnomalyDetectionLib.inference import detect

    return sitk.GetArrayFromImage(detect(image, bundle, device="cpu").anomaly_map)


def _same_as_small_values(outcome: Outcome, variant: str) -> None:
    array = _integers(variant).array
    wide = array.astype(np.uint64 if array.dtype.kind == "u" else np.int64)  # no wrap-around in the subtraction
    shifted = Volume((wide - wide.min()).astype(np.float32))  # exact: the range is small
    np.testing.assert_allclose(outcome.map, _intensity_map(shifted.image(), outcome.bundle), atol=1e-4)
    z, y, x = BLOB
    assert outcome.map[z, y, x] == outcome.map.max() > 4 * np.median(outcome.map[outcome.map > 0])  # the lesion


# --- geometry -------------------------------------------------------------------------------------------------------

def _rotation(degrees: float, axis: int) -> np.ndarray:
    c, s = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
    a, b = [i for i in range(3) if i != axis]
    matrix = np.eye(3)
    matrix[a, a], matrix[a, b], matrix[b, a], matrix[b, b] = c, -s, s, c
    return matrix


OBLIQUE = tuple((_rotation(25, 2) @ _rotation(15, 0)).ravel())
FLIPPED = (-1, 0, 0, 0, 1, 0, 0, 0, -1)
# head() stored with its I and K axes reversed: the same anatomy at the same place (origin at the far corner).
HEAD_FLIPPED = Volume(head_array()[::-1, :, ::-1].copy(), direction=FLIPPED, origin=(3.0 * 39, 0.0, 3.0 * 23))
SHEARED = (1, 0.4, 0, 0, 1, 0, 0, 0, 1)
ANISOTROPIC = Volume(head_array((12, 64, 64), blob=(6, 30, 40)), spacing=(1.0, 1.0, 7.0))
SMALL = Volume(head_array((16, 16, 16), blob=None), spacing=(1.0, 1.0, 1.0))


def _lesion_is_the_maximum(outcome: Outcome, variant: Any) -> None:
    z, y, x = BLOB
    assert outcome.map[z - 1:z + 2, y - 2:y + 3, x - 2:x + 3].max() == outcome.map.max() > 0


def _same_as_unflipped(outcome: Outcome, variant: Any) -> None:
    plain = _intensity_map(head().image(), outcome.bundle)
    np.testing.assert_allclose(outcome.map[::-1, :, ::-1], plain, atol=1e-4)


# --- brain masks ----------------------------------------------------------------------------------------------------

BRAIN = head_array(blob=None) > 0


def _mask_file(mask: np.ndarray, spacing=(3.0, 3.0, 3.0)) -> Callable[[Path, Any], list[str]]:
    def make(folder: Path, variant: Any) -> list[str]:
        path = Volume(mask.astype(np.uint8), spacing=spacing, name="brain").write(folder)
        return [*_head_file(folder, variant), "--brain-mask", str(path)]
    return make


def _mask_node(mask: np.ndarray, spacing=(3.0, 3.0, 3.0)) -> Callable[[Any, Any], tuple[Any, dict]]:
    def make(scene, variant: Any) -> tuple[Any, dict]:
        label = Volume(mask.astype(np.uint8), spacing=spacing, name="brain").node(scene)
        return head().node(scene), {"brainMask": label}
    return make


# --- DICOM ----------------------------------------------------------------------------------------------------------

SERIES = {"1.2.826.0.1.3680043.2.1125.100": "AX FLAIR", "1.2.826.0.1.3680043.2.1125.200": "AX T1 post"}
FLAIR_UID = "1.2.826.0.1.3680043.2.1125.100"


def write_dicom_series(folder: Path, array: np.ndarray, uid: str, description: str, spacing=(1.0, 1.0, 3.0),
                       skip: tuple[int, ...] = ()) -> None:
    """One file per K index of ``array`` (int16), as a scanner exports an axial series; ``skip`` leaves slices out.
    (GDCM's writer sets the process's locale to "C", which would make Python's text files ASCII: it is restored.)"""
    folder.mkdir(parents=True, exist_ok=True)
    previous = locale.setlocale(locale.LC_ALL)
    try:
        _write_slices(folder, array, uid, description, spacing, skip)
    finally:
        locale.setlocale(locale.LC_ALL, previous)


def _write_slices(folder: Path, array: np.ndarray, uid: str, description: str, spacing, skip) -> None:
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(array.shape[0]):
        if k in skip:
            continue
        image = sitk.GetImageFromArray(array[k:k + 1].astype(np.int16))
        image.SetSpacing(spacing)
        for tag, value in (("0008|0060", "MR"), ("0010|0010", "Test^Patient"), ("0020|000d", "1.2.826.0.1.1"),
                           ("0020|000e", uid), ("0008|103e", description), ("0020|0037", "1\\0\\0\\0\\1\\0"),
                           ("0020|0032", f"0\\0\\{k * spacing[2]}"), ("0020|0013", str(k + 1)),
                           ("0028|0030", f"{spacing[1]}\\{spacing[0]}"), ("0018|0050", str(spacing[2])),
                           ("0008|0018", f"{uid}.{k + 1}")):
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{uid.rsplit('.', 1)[1]}_{k:03d}.dcm"))
        writer.Execute(image)


def _dicom_array(seed: int, width: int = 40) -> np.ndarray:
    return head_array((10, 40, width), blob=(5, 20, 20), seed=seed).round().astype(np.int16)


def _two_series(folder: Path) -> Path:
    """The FLAIR series (40 columns) and a T1 series (32 columns) in one folder."""
    dicom = folder / "dicom"
    for seed, (uid, description) in enumerate(SERIES.items()):
        write_dicom_series(dicom, _dicom_array(seed, 40 - 8 * seed), uid, description)
    return dicom


def _the_flair_series(outcome: Outcome, variant: Any) -> None:
    assert outcome.map.shape == (10, 40, 40)


def _missing_slice(folder: Path, variant: Any) -> list[str]:
    write_dicom_series(folder / "dicom", _dicom_array(0), FLAIR_UID, "AX FLAIR", skip=(4,))
    return [str(folder / "dicom")]


# --- bundles --------------------------------------------------------------------------------------------------------

def _copy_bundle(source: Path, folder: Path) -> Path:
    target = folder / "bundle"
    target.mkdir()
    for name in (CARD_FILE, WEIGHTS_FILE):
        (target / name).write_bytes((source / name).read_bytes())
    return target


def _rewrite_card(bundle: Path, **changes) -> None:
    card = json.loads((bundle / CARD_FILE).read_text())
    card.update(changes)
    (bundle / CARD_FILE).write_text(json.dumps(card))


def _wrong_checksum(folder: Path, tiny: Path, variant: Any) -> Path:
    bundle = _copy_bundle(tiny, folder)
    weights = bytearray((bundle / WEIGHTS_FILE).read_bytes())
    weights[-100] ^= 0xFF
    (bundle / WEIGHTS_FILE).write_bytes(bytes(weights))
    return bundle


def _other_method(folder: Path, tiny: Path, variant: Any) -> Path:
    bundle = _copy_bundle(tiny, folder)
    _rewrite_card(bundle, method="ae", hyperparameters=AutoencoderConfig(widths=(4, 8)).to_dict())
    return bundle


class Payload:
    """Unpickling this creates ``marker``: proof that a loader ran code from a weights file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def payload_marker(folder: Path) -> Path:
    return folder / "pickle-payload-ran"


def _malicious(folder: Path, tiny: Path, how: str) -> Path:
    """The tiny bundle with a weights file whose unpickling would create :func:`payload_marker`, and whose sha256
    the card holds (so only the loader stands between the file and the payload)."""
    bundle = _copy_bundle(tiny, folder)
    weights = bundle / WEIGHTS_FILE
    payload = {"reconstructor.weight": Payload(payload_marker(folder))}
    if how == "torch.save":
        torch.save(payload, weights)
    else:
        weights.write_bytes(pickle.dumps(payload))
    _rewrite_card(bundle, sha256=sha256_of(weights))
    return bundle


# --- environment ----------------------------------------------------------------------------------------------------

PREVIOUS_RUN = b"a previous run's output"


def _unwritable(folder: Path, variant: Any) -> list[str]:
    (folder / "blocker").write_text("a file where the output folder should go")
    return [*_head_file(folder, variant), "--output-dir", str(folder / "blocker" / "out")]


def _with_previous_run(folder: Path, variant: Any) -> list[str]:
    """The head, and an output folder (``folder/out``, where the test writes) holding a previous run's outputs."""
    from MedicalAnomalyDetectionLib.outputs import OutputPaths

    (folder / "out").mkdir()
    for path in OutputPaths(folder / "out").files:
        path.write_bytes(PREVIOUS_RUN)
    return _head_file(folder, variant)


def _full_disk(monkeypatch, failing: str) -> None:
    """The disk fills up while the output ``failing`` is written (by SimpleITK, or by Python's ``open``): half a
    file lands, then the write fails as it does on a full disk."""
    import builtins

    write_image, real_open = sitk.WriteImage, builtins.open

    def full(path: Any) -> bool:
        return str(path).endswith(failing)

    def writing(image, path, *args, **kwargs):
        if full(path):
            Path(path).write_bytes(b"\x1f\x8b half-written")
            raise RuntimeError(f"ITK ERROR: ImageFileWriter: {os.strerror(errno.ENOSPC)} while writing {path}")
        return write_image(image, path, *args, **kwargs)

    class Filling:
        def __init__(self, handle) -> None:
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self.handle.close()

        def write(self, text: str) -> int:
            self.handle.write(text[:len(text) // 2])
            self.handle.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def opening(path, *args, **kwargs):
        handle = real_open(path, *args, **kwargs)
        return Filling(handle) if full(path) else handle

    monkeypatch.setattr(sitk, "WriteImage", writing)
    monkeypatch.setattr(builtins, "open", opening)


class ExhaustedGPU:
    """A method on a "cuda" device whose first score raises what torch raises on a full GPU."""

    device = torch.device("cuda")

    def score(self, slices: torch.Tensor, mask: torch.Tensor):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def _gpu_out_of_memory(monkeypatch, variant: Any) -> None:
    """``auto`` finds a GPU, and the method built on it runs out of memory at once."""
    from MedicalAnomalyDetectionLib import inference

    build = inference.build_method
    monkeypatch.setattr(inference, "choose_device", lambda requested="auto": torch.device("cuda"))
    monkeypatch.setattr(inference, "build_method",
                        lambda bundle, device: ExhaustedGPU() if device.type == "cuda" else build(bundle, device))


def _fell_back_to_cpu(outcome: Outcome, variant: Any) -> None:
    assert outcome.device == "cpu (the GPU ran out of memory)"
    assert "the GPU ran out of memory; scoring again on the CPU" in outcome.text


def _warned_of_t1(outcome: Outcome, variant: Any) -> None:
    warning = "looks like T1 but the model was trained on FLAIR"
    assert warning in outcome.text and any(warning in w for w in outcome.warnings)


def _squeezed(outcome: Outcome, variant: Any) -> None:
    assert "squeezed to 3D" in outcome.text


CASES: tuple[Case, ...] = (
    Case("2d", "a 2D image (one slice saved alone)", "is 2D; a 3D volume is needed", REFUSED, True,
         make=_written("slice.nii.gz", lambda: sitk.GetImageFromArray(head_array()[12]))),
    Case("4d", "a 4D volume (two time points)", "is 4D (2 time points/channels)", REFUSED, True,
         make=_written("fmri.nii.gz", lambda: sitk.JoinSeries([head().image(), head().image()]))),
    Case("vector", "a vector volume (RGB: 3 components per voxel)", "has 3 components per voxel", REFUSED, True,
         make=_written("rgb.nii.gz", lambda: sitk.Compose([head().image()] * 3)), node=_vector_node),
    Case("singleton", "a 4D file whose fourth axis has one element (NRRD; a NIfTI one SimpleITK reads as 3D)",
         "exit 0; stderr: `… squeezed to 3D`", ON_GRID, False,
         make=_written("one_frame.nrrd", lambda: sitk.JoinSeries([head().image()])), check=_squeezed),
    Case("empty-file", "an empty file (0 bytes)", "the file is empty", REFUSED, True, make=_empty_file),
    Case("truncated", "a `.nii.gz` cut short: at 1 %, 33 %, 67 % of its bytes, 1 byte before the end",
         "the gzip stream is damaged or ends early", REFUSED + " (SimpleITK alone reads it, missing voxels as 0)",
         True, make=_truncated, variants=(0.01, 0.33, 0.67, -1)),
    Case("short-nifti", "an uncompressed `.nii` whose header promises more voxels than it holds",
         "the file is truncated (its header promises", REFUSED + " (SimpleITK alone reads it)", True,
         make=_short_nifti),
    Case("all-zero", "all voxels zero", "is constant (every voxel is 0)", REFUSED, True,
         make=_file(_values(np.zeros_like)), node=_node(_values(np.zeros_like))),
    Case("constant", "all voxels one value", "is constant (every voxel is 7)", REFUSED, True,
         make=_file(_values(lambda a: np.full_like(a, 7.0))), node=_node(_values(lambda a: np.full_like(a, 7.0)))),
    Case("nan", "a few NaN or infinite voxels (an export glitch), in a NIfTI or an NRRD",
         "exit 0; stderr and report.json `warnings`: `volume: 3 NaN/Inf voxels (0.01%) were read as the background "
         "value 0`", ON_GRID + "; those voxels are background (SimpleITK alone reads a NIfTI's NaN/Inf as 0 without "
         "a word)", False, make=_file(_a_few_non_finite), node=_node(_a_few_non_finite), check=_non_finite_repaired,
         variants=(".nii.gz", ".nrrd")),
    Case("mostly-nan", "a volume that is mostly NaN (60 % of its voxels)", "holds 23040 NaN/Inf voxels (60% of the "
         "volume)", REFUSED, True, make=_file(_mostly_nan), node=_node(_mostly_nan)),
    Case("float64-huge", "float64 voxels beyond float32's range (tissue at 1e300)", "beyond what float32 can hold",
         REFUSED, True, make=_file(_values(lambda a: a.astype(np.float64) * 1e300)),
         node=_node(_values(lambda a: a.astype(np.float64) * 1e300))),
    Case("integer-range", "integer voxels near overflow: int16 over its whole range, uint16 saturated at 65535, "
         "int32 near 2^31, uint64 near 2^63", "exit 0", ON_GRID + "; the map equals that of the same volume shifted "
         "to small values (no overflow, no float32 rounding of the texture)", False,
         make=_file(_integers), node=_node(_integers), check=_same_as_small_values,
         variants=("int16 full range", "uint16 saturated", "int32 near 2^31", "uint64 near 2^63")),
    Case("spacing-zero", "voxel spacing 0 in the header (SimpleITK alone reads 1 mm)",
         "a spacing must be a positive number", REFUSED, True, make=_nifti_spacing(0.0),
         node=_node(lambda variant: head(spacing=(0.0, 3.0, 3.0)))),
    Case("spacing-negative", "a negative voxel spacing in the header (SimpleITK alone flips the axis)",
         "a spacing must be a positive number", REFUSED, True, make=_nifti_spacing(-3.0),
         node=_node(lambda variant: head(spacing=(-3.0, 3.0, 3.0)))),
    Case("spacing-huge", "a voxel spacing of 1e6 mm", "has absurd voxel spacing", REFUSED, True,
         make=_nifti_spacing(1e6), node=_node(lambda variant: head(spacing=(1e6, 3.0, 3.0)))),
    Case("sheared", "a direction matrix that is not orthonormal (sheared axes; a MetaImage file)",
         "axes are not perpendicular unit vectors", REFUSED, True,
         make=_file(lambda variant: head(direction=SHEARED, suffix=".mha")),
         node=_node(lambda variant: head(direction=SHEARED))),
    Case("oblique", "an oblique volume (axes rotated by 25° and 15°)", "exit 0",
         ON_GRID + "; the lesion is the map's maximum", False, make=_file(lambda variant: head(direction=OBLIQUE)),
         node=_node(lambda variant: head(direction=OBLIQUE)), check=_lesion_is_the_maximum),
    Case("flipped", "flipped axes (the same head stored with left-right and head-foot reversed)", "exit 0",
         ON_GRID + "; the map is the unflipped volume's map, flipped", False,
         make=_file(lambda variant: HEAD_FLIPPED), node=_node(lambda variant: HEAD_FLIPPED),
         check=_same_as_unflipped),
    Case("anisotropic", "1×1×7 mm voxels", "exit 0", ON_GRID, False, make=_file(lambda variant: ANISOTROPIC),
         node=_node(lambda variant: ANISOTROPIC)),
    Case("large", "a 512×512×400 volume (0.5 mm voxels)", "exit 0 after 53 s; peak resident memory 2.0 GiB "
         "(2016 MiB) with `patchgan-flair` on one CPU thread",
         ON_GRID + "; memory grows with the voxels at a small constant (`docs/measure_peak_rss.py`; tested on "
         "512×512×32)", False),
    Case("smaller-than-patch", "a 16×16×16 mm volume, smaller than one 32-pixel patch", "exit 0", ON_GRID, False,
         make=_file(lambda variant: SMALL), node=_node(lambda variant: SMALL)),
    Case("too-small", "fewer than 16 voxels along two axes (12×12×12)", "is too small for the model", REFUSED, True,
         make=_file(lambda variant: Volume(head_array((12, 12, 12), blob=None))),
         node=_node(lambda variant: Volume(head_array((12, 12, 12), blob=None)))),
    Case("mask-grid", "a brain mask on another grid", "lies on another grid than the input", REFUSED, True,
         make=_mask_file(BRAIN, (2.0, 3.0, 3.0)), node=_mask_node(BRAIN, (2.0, 3.0, 3.0))),
    Case("mask-empty", "an empty brain mask", "brain mask is empty", REFUSED, True,
         make=_mask_file(np.zeros_like(BRAIN)), node=_mask_node(np.zeros_like(BRAIN))),
    Case("mask-everything", "a brain mask covering the whole image", "brain mask covers the whole image", REFUSED,
         True, make=_mask_file(np.ones_like(BRAIN)), node=_mask_node(np.ones_like(BRAIN))),
    Case("dicom-two-series", "a DICOM folder holding two series, no `--series`",
         "holds 2 DICOM series; choose one by its UID (mad-detect --series UID): "
         "1.2.826.0.1.3680043.2.1125.100 (AX FLAIR, 10 files); 1.2.826.0.1.3680043.2.1125.200 (AX T1 post, 10 files)",
         REFUSED, True, make=lambda folder, variant: [str(_two_series(folder))]),
    Case("dicom-series", f"the same folder with `--series {FLAIR_UID}`", "exit 0", ON_GRID + " of the chosen series",
         False, make=lambda folder, variant: [str(_two_series(folder)), "--series", FLAIR_UID],
         check=_the_flair_series),
    Case("dicom-missing-slice", "a DICOM series with one slice missing",
         "has unevenly spaced slices (gaps from 3 to 6 mm): a slice is missing or duplicated",
         REFUSED + " (SimpleITK alone reads it, with a wrong spacing)", True, make=_missing_slice),
    Case("checksum", "a bundle whose weights do not match the card's sha256", "does not match its model card",
         REFUSED, True, make=_head_file, node=_head_node, bundle=_wrong_checksum),
    Case("other-method", "a card naming another method than its weights (`ae` over Patch-GAN weights)",
         "do not match its model card's network", REFUSED, True, make=_head_file, node=_head_node,
         bundle=_other_method),
    Case("pickle", "a weights file that is a malicious pickle, its sha256 in the card (written by `torch.save` or "
         "`pickle.dump`)", "refusing to load", REFUSED + "; the payload never runs", True, make=_head_file,
         node=_head_node, bundle=_malicious, variants=("torch.save", "pickle.dump")),
    Case("modality", "an input named like another contrast (`t1_mprage.nii.gz`, a FLAIR model)",
         "exit 0; stderr: `t1_mprage.nii.gz looks like T1 but the model was trained on FLAIR; …`",
         ON_GRID + "; the warning is in report.json too", False,
         make=_file(lambda variant: head(name="t1_mprage")), node=_node(lambda variant: head(name="t1_mprage")),
         check=_warned_of_t1),
    Case("unwritable", "an output folder that cannot be created (a file stands in its path)",
         "output folder is not writable", REFUSED, True, make=_unwritable),
    Case("full-disk", "a disk that fills up while the outputs are written (at the label map, or at the scores)",
         "cannot write the outputs to", "exit status 1; no half-written file is left and no output of this run "
         "appears under its final name; a previous run's outputs stay, without their report.json (so they are not "
         "taken for complete)", True, make=_with_previous_run, patch=_full_disk, removes=("out/report.json",),
         variants=("anomaly_label.nii.gz", "slice_scores.csv")),
    Case("gpu-oom", "the GPU runs out of memory while scoring", "exit 0; stderr: `the GPU ran out of memory; scoring "
         "again on the CPU`; report.json `device`: `cpu (the GPU ran out of memory)`", ON_GRID, False,
         make=_head_file, node=_head_node, patch=_gpu_out_of_memory, check=_fell_back_to_cpu),
)
