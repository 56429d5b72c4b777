"""Method plug-ins, looked up by the ``method`` field of a model card (see :mod:`.registry`)."""

from .base import AnomalyMethod, SliceResult
from .registry import build_method, method_class, method_names, register, with_overrides

__all__ = ["AnomalyMethod", "SliceResult", "build_method", "method_class", "method_names", "register",
           "with_overrides"]
