"""Making sure PyTorch (and, for skull-on scans, deepbet's brain-extraction weights) are there in Slicer's Python,
on first use (needs a running Slicer).

The core needs torch, numpy and SimpleITK; Slicer ships numpy and SimpleITK (never replaced here), so only torch may
be missing. It is installed through the PyTorch extension, which picks the wheel matching the GPU driver. Brain
extraction uses only the two weight files of the ``deepbet`` wheel, so it is installed with ``--no-deps``: none of
its GUI (customtkinter) or table (pandas) dependencies, and nothing of Slicer's own packages, is touched.
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


DEEPBET_REQUIREMENT = "deepbet==1.0.2"


def ensureDeepbet() -> bool:
    """True when deepbet's weights are installed, after offering to install them (17 MB, no dependencies)."""
    from MedicalAnomalyDetectionLib.brain_extraction import deepbet_weights

    if deepbet_weights() is not None:
        return True
    if not slicer.util.confirmOkCancelDisplay(
            "This volume still has its skull and no brain mask was selected. Brain extraction needs the deepbet "
            f"network weights ({DEEPBET_REQUIREMENT}, MIT licence, 17 MB, installed without its dependencies). "
            "Install them now?"):
        return False
    slicer.util.pip_install(f"{DEEPBET_REQUIREMENT} --no-deps")
    import importlib

    importlib.invalidate_caches()
    return deepbet_weights() is not None
