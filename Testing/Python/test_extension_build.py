"""The Slicer extension's CMake files list every script of the module, so an installed extension is complete."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "MedicalAnomalyDetection"


def test_every_module_script_is_globbed_by_the_build():
    globs = re.search(r"file\(GLOB_RECURSE MODULE_PYTHON_SCRIPTS .*?CONFIGURE_DEPENDS(.*?)\)",
                      (MODULE / "CMakeLists.txt").read_text(), re.S).group(1).split()
    patterns = [g.replace("${CMAKE_CURRENT_SOURCE_DIR}/", "").replace("${MODULE_NAME}", "MedicalAnomalyDetection")
                for g in globs]
    globbed = {str(p.relative_to(MODULE)) for pattern in patterns
               for p in MODULE.glob(pattern.replace("/*.py", "/**/*.py") if "*" in pattern else pattern)}
    on_disk = {str(p.relative_to(MODULE)) for p in MODULE.rglob("*.py") if "__pycache__" not in p.parts}
    assert "MedicalAnomalyDetectionLib/methods/patchgan.py" in globbed and globbed == on_disk


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
