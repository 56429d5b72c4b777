"""Checks of volume files that SimpleITK reads without complaint, but wrongly.

A NIfTI whose voxel data end early (an interrupted download or copy, a ``.nii.gz`` cut anywhere) is read with the
missing voxels as zeros, NaN and infinite NIfTI voxels are read as zeros, and header spacings that are not positive
are quietly replaced (a NIfTI ``pixdim`` or a MetaImage ``ElementSpacing`` of 0 becomes 1 mm, a negative one a
flipped axis). :func:`check_volume_file` refuses the damaged files before SimpleITK sees them and finds where a
NIfTI's NaN/Inf voxels are, so that ``volume_io.read_volume`` can put them back for ``volume_io.validate_volume``
(as NRRD and MetaImage files keep them); NRRD and MetaImage voxel data that end early are refused by SimpleITK.
"""

from __future__ import annotations

import gzip
import itertools
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError

# NIfTI-1 and NIfTI-2 headers, by their size: (offset, struct code) of dim, bitpix, datatype, pixdim, vox_offset.
_NIFTI_LAYOUTS = {348: ((40, "8h"), (72, "h"), (70, "h"), (76, "8f"), (108, "f")),
                  540: ((16, "8q"), (14, "h"), (12, "h"), (104, "8d"), (168, "q"))}
FLOAT_TYPES = {16: "f4", 64: "f8"}  # NIfTI datatype codes of float32 and float64
CHUNK_BYTES = 1 << 23  # a multiple of every item size
_GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)
MAX_HEADER_LINES = 200  # a MetaImage header is a few dozen lines; past this it is binary data


def check_volume_file(path: Path) -> np.ndarray:
    """Raise :class:`InputError` when ``path`` is empty, a NIfTI holding fewer voxel bytes than its header promises
    (or a ``.nii.gz`` whose gzip stream ends early or is damaged), or a NIfTI/MetaImage header with a voxel spacing
    that is not a positive finite number. Returns the flat indices (in storage order, which is the order of
    ``sitk.GetArrayFromImage(...).ravel()``) of a NIfTI's NaN/Inf voxels, which SimpleITK reads as 0; empty for
    other formats."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise InputError(f"cannot read {path}: the file is empty")
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return _check_nifti(path, compressed=name.endswith(".gz"))
    if name.endswith((".mha", ".mhd")):
        _check_metaimage(path)
    return np.empty(0, np.int64)


@dataclass(frozen=True)
class NiftiHeader:
    """What the checks need from a NIfTI header."""

    dims: list[int]  # sizes of the stored dimensions
    bitpix: int
    datatype: int
    spacing: list[float]  # of the (up to three) spatial dimensions
    offset: int  # of the voxel data
    order: str  # byte order, "<" or ">"


def _check_nifti(path: Path, compressed: bool) -> np.ndarray:
    header = _nifti_header(_read_head(path, compressed, 540), path)
    _check_spacing(header.spacing, path)
    needed = header.offset + math.prod(header.dims) * header.bitpix // 8
    floats = np.dtype(header.order + FLOAT_TYPES[header.datatype]) if header.datatype in FLOAT_TYPES else None
    stored, non_finite = _scan(path, compressed, header.offset, floats)
    if stored < needed:
        raise InputError(f"cannot read {path}: the file is truncated (its header promises {needed} bytes, it holds "
                         f"{stored}); copy or download it again")
    return non_finite[non_finite < math.prod(header.dims)]  # not past the voxel data


def _read_head(path: Path, compressed: bool, count: int) -> bytes:
    try:
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as handle:
            return handle.read(count)
    except _GZIP_ERRORS as error:
        raise _damaged_gzip(path, error) from None


def _nifti_header(head: bytes, path: Path) -> NiftiHeader:
    for order in "<>":
        size = struct.unpack(order + "i", head[:4])[0] if len(head) >= 4 else 0
        if size not in _NIFTI_LAYOUTS:
            continue
        if len(head) < size:
            raise InputError(f"cannot read {path}: the file ends inside its NIfTI header; copy or download it again")
        layout = _NIFTI_LAYOUTS[size]
        dim, bitpix, datatype, pixdim, offset = (struct.unpack_from(order + code, head, at)
                                                 for at, code in layout)
        rank = dim[0]
        if not 1 <= rank <= 7 or any(n < 1 for n in dim[1:rank + 1]) or bitpix[0] < 1:
            raise InputError(f"cannot read {path}: malformed NIfTI header (dimensions "
                             f"{tuple(dim[1:max(rank, 0) + 1])}, {bitpix[0]} bits per voxel)")
        return NiftiHeader(dims=list(dim[1:rank + 1]), bitpix=int(bitpix[0]), datatype=int(datatype[0]),
                           spacing=list(pixdim[1:min(rank, 3) + 1]), offset=int(offset[0]), order=order)
    raise InputError(f"cannot read {path}: not a NIfTI file (its header is missing or damaged)")


def _scan(path: Path, compressed: bool, offset: int, floats: np.dtype | None) -> tuple[int, np.ndarray]:
    """(bytes in the file, or in its whole gzip stream, read to its end so its checksum is verified; the indices of
    the values of ``floats`` after ``offset`` that are NaN or infinite)."""
    none = np.empty(0, np.int64)
    if floats is None and not compressed:
        return path.stat().st_size, none
    total, found, items = 0, [none], 0
    try:
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as stream:
            total += len(stream.read(offset))
            while chunk := stream.read(CHUNK_BYTES):
                total += len(chunk)
                if floats is not None:
                    values = np.frombuffer(chunk[:len(chunk) - len(chunk) % floats.itemsize], floats)
                    found.append(items + np.flatnonzero(~np.isfinite(values)))
                    items += len(values)
    except _GZIP_ERRORS as error:
        raise _damaged_gzip(path, error) from None
    return total, np.concatenate(found)


def _damaged_gzip(path: Path, error: Exception) -> InputError:
    return InputError(f"cannot read {path}: the gzip stream is damaged or ends early ({error}); copy or download the "
                      "file again")


def _check_metaimage(path: Path) -> None:
    with open(path, "rb") as handle:
        for raw in itertools.islice(handle, MAX_HEADER_LINES):
            key, _, value = raw.decode("latin-1").partition("=")
            key = key.strip()
            if key in ("ElementSpacing", "ElementSize"):
                try:
                    spacing = [float(v) for v in value.split()]
                except ValueError:
                    raise InputError(f"cannot read {path}: unreadable {key} {value.strip()}") from None
                _check_spacing(spacing, path)
            if key == "ElementDataFile":
                return


def _check_spacing(spacing: list[float], path: Path) -> None:
    if any(not math.isfinite(s) or s <= 0 for s in spacing):
        raise InputError(f"cannot read {path}: its header gives voxel spacing {tuple(spacing)} mm; a spacing must "
                         "be a positive number (the file is damaged or was written wrongly)")
