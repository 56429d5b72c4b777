"""Making sure PyTorch is importable in Slicer's Python, on first use (needs a running Slicer).

The core needs torch, numpy and SimpleITK; Slicer ships numpy and SimpleITK (never replaced here), so only torch may
be missing. It is installed through the PyTorch extension, which picks the wheel matching the GPU driver.
"""

import importlib.util

import slicer

TORCH_REQUIREMENT = ">=2.1"  # as in pyproject.toml: weights_only loading and CPU/GPU autocast


def torchAvailable() -> bool:
    return importlib.util.find_spec("torch") is not None


def ensureTorch() -> bool:
    """True when torch can be imported, after offering to install it; False when the user declines or it fails."""
    if torchAvailable():
        return True
    try:
        import PyTorchUtils
    except ImportError:
        slicer.util.errorDisplay("MedicalAnomalyDetection needs PyTorch. Install the 'PyTorch' extension from the "
                                 "Extensions Manager, restart Slicer and try again.")
        return False
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True,
                                                          torchVersionRequirement=TORCH_REQUIREMENT)
    return torch is not None
