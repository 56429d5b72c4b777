"""Method plug-ins, looked up by the ``method`` field of a model card."""

from __future__ import annotations

import torch

from ..bundle import Bundle
from ..errors import InputError
from .alocc import ALOCC
from .autoencoder import Autoencoder
from .base import AnomalyMethod, SliceResult
from .intensity import IntensityBaseline
from .ocsvm import OneClassSVMMethod
from .pathoscope import PathoSCOPE
from .patchgan import PatchGAN

METHODS: dict[str, type] = {cls.name: cls for cls in (PatchGAN, IntensityBaseline, Autoencoder, OneClassSVMMethod,
                                                      ALOCC, PathoSCOPE)}

__all__ = ["METHODS", "AnomalyMethod", "SliceResult", "build_method"]


def build_method(bundle: Bundle, device: torch.device) -> AnomalyMethod:
    """Instantiate the plug-in named by the bundle's card."""
    method = METHODS.get(bundle.card.method)
    if method is None:
        raise InputError(f"model {bundle.card.name} uses unknown method {bundle.card.method!r} "
                         f"(known: {', '.join(sorted(METHODS))})")
    try:
        return method.from_bundle(bundle, device)
    except (KeyError, TypeError, ValueError) as error:
        raise InputError(f"model card of {bundle.card.name} has malformed hyper-parameters: {error!r}") from None
