"""Method plug-ins, looked up by the ``method`` field of a model card (see :mod:`.registry`)."""

from .base import AnomalyMethod, SliceResult
from .registry import applicable_ablations, build_method, method_class, method_names, register, with_overrides

__all__ = ["AnomalyMethod", "SliceResult", "applicable_ablations", "build_method", "method_class", "method_names", "register",
           "with_overrides"]
