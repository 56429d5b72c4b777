"""Device choice and mixed precision: CUDA when present (bf16/fp16 autocast), else CPU with bf16 autocast."""

from __future__ import annotations

import argparse
import contextlib
import logging

import torch

from ..errors import InputError

log = logging.getLogger(__name__)


DEVICE_CHOICES = ("auto", "cpu", "cuda")


def add_device_argument(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    """The ``--device`` option of every command line; :func:`choose_device` decodes it."""
    parser.add_argument("--device", default=default, choices=DEVICE_CHOICES,
                        help=f"auto: CUDA when usable, else the CPU (default: {default})")


def choose_device(requested: str = "auto") -> torch.device:
    """``auto`` takes CUDA when usable, else the CPU (and says so); ``cuda`` without a GPU is an error."""
    if requested not in DEVICE_CHOICES:
        raise InputError(f"device must be auto, cpu or cuda, not {requested!r}")
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if requested == "cuda":
        raise InputError("device cuda was asked for but no usable CUDA GPU is present")
    log.info("no usable GPU; running on the CPU")
    return torch.device("cpu")


def cpu_supports_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX): only there does bf16 autocast pay off (2-3x for
    convolutions). oneDNN also runs bf16 on plain AVX-512 by conversion, at about half the speed of fp32 (measured on
    a Xeon without AVX512-BF16: 57 against 114 GFLOP/s for a channels_last 3x3 convolution), so that is not enough."""
    if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return False
    native = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(check is not None and check() for check in native)


def autocast_for(device: torch.device, training: bool = False) -> contextlib.AbstractContextManager:
    """The autocast context used for network forward passes on ``device``: bf16 where supported; fp16 on older
    GPUs for inference only (training there stays fp32, as fp16 gradients would need loss scaling)."""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext() if training else torch.autocast("cuda", dtype=torch.float16)
    if cpu_supports_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()
