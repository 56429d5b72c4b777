"""The Slicer extension's CMake files list every script of the module, so an installed extension is complete."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "MedicalAnomalyDetection"


def test_every_module_script_is_in_the_build():
    listed = set(re.search(r"set\(MODULE_PYTHON_SCRIPTS(.*?)\)", (MODULE / "CMakeLists.txt").read_text(),
                           re.S).group(1).split())
    on_disk = {str(p.relative_to(MODULE)) for p in MODULE.rglob("*.py") if "__pycache__" not in p.parts}
    assert {s.replace("${MODULE_NAME}", "MedicalAnomalyDetection") for s in listed} == on_disk


def test_extension_metadata_and_pytorch_dependency():
    text = (REPO / "CMakeLists.txt").read_text()
    for field in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS"):
        assert re.search(rf"set\(EXTENSION_{field} \S", text), field
    assert re.search(r"set\(EXTENSION_DEPENDS PyTorch\)", text)
    assert "add_subdirectory(MedicalAnomalyDetection)" in text


def test_sample_data_checksums_match_the_bundled_files():
    import hashlib
    import sys

    sys.path.insert(0, str(MODULE))
    from MedicalAnomalyDetectionSlicer.sample_data import SAMPLE_FILES, SAMPLE_FOLDER

    folder = REPO.joinpath("Resources", *SAMPLE_FOLDER)
    for name, (_, checksum) in SAMPLE_FILES.items():
        assert checksum == "SHA256:" + hashlib.sha256((folder / name).read_bytes()).hexdigest(), name
