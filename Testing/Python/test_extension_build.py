"""The Slicer extension's CMake files list every script of the module, so an installed extension is complete."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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


# The installed module, asked where it looks: bundled models and Resources files, all inside the install prefix.
WHERE_IT_LOOKS = """
import json, sys
sys.path.insert(0, sys.argv[1])
from MedicalAnomalyDetectionLib import bundle
from MedicalAnomalyDetectionSlicer import resourcePath
from MedicalAnomalyDetectionSlicer.sample_data import SAMPLE_FILES, SAMPLE_FOLDER
print(json.dumps({"code": bundle.__file__, "models": str(bundle.bundled_models_dir()),
                  "names": [card.name for card in bundle.list_bundled_models()],
                  "ui": str(resourcePath("UI", "MedicalAnomalyDetection.ui")),
                  "icon": str(resourcePath("Icons", "MedicalAnomalyDetection.png")),
                  "sample": [str(resourcePath(*SAMPLE_FOLDER, name)) for name in SAMPLE_FILES]}))
"""


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_extension_configures_builds_and_installs_where_the_module_looks(tmp_path):
    """Against the stand-in SlicerConfig.cmake in Testing/CMake: this checks our CMake, not Slicer's macros."""
    build, prefix = tmp_path / "build", tmp_path / "prefix"
    for command in (["cmake", "-S", str(REPO), "-B", str(build), f"-DSlicer_DIR={REPO / 'Testing' / 'CMake'}",
                     f"-DCMAKE_INSTALL_PREFIX={prefix}"],
                    ["cmake", "--build", str(build)], ["cmake", "--install", str(build)]):
        completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert completed.returncode == 0, completed.stdout + completed.stderr
    tests = subprocess.run(["ctest", "-N"], cwd=build, capture_output=True, text=True, timeout=60).stdout
    assert "py_MedicalAnomalyDetection" in tests

    slicer_dir = prefix / "lib" / "Slicer-5.8"
    modules = slicer_dir / "qt-scripted-modules"
    scripts = {str(p.relative_to(MODULE)) for p in MODULE.rglob("*.py") if "__pycache__" not in p.parts}
    assert {str(p.relative_to(modules)) for p in modules.rglob("*.py")} == scripts

    resources = REPO / "Resources"
    bundled = [m["name"] for m in json.loads((resources / "Models" / "catalogue.json").read_text())["models"]
               if m["source"] == "bundled"]
    expected = {str(p.relative_to(resources)) for pattern in ("UI/*.ui", "Icons/*.png", "Models/catalogue.json",
                                                              "Models/*/card.json", "Sample/*/*",
                                                              *(f"Models/{name}/weights.pt" for name in bundled))
                for p in resources.glob(pattern)}
    installed = slicer_dir / "Resources"
    assert {str(p.relative_to(installed)) for p in installed.rglob("*") if p.is_file()} == expected
    for name in expected:
        assert (installed / name).read_bytes() == (resources / name).read_bytes(), name

    env = {k: v for k, v in os.environ.items() if k not in ("MAD_MODELS_DIR", "PYTHONPATH")}
    looked = subprocess.run([sys.executable, "-c", WHERE_IT_LOOKS, str(modules)], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=120)
    assert looked.returncode == 0, looked.stderr
    where = json.loads(looked.stdout)
    assert Path(where["code"]).is_relative_to(modules)  # the installed copy, not the source tree
    assert Path(where["models"]) == installed / "Models"
    assert sorted(where["names"]) == sorted(p.name for p in (resources / "Models").iterdir() if p.is_dir())
    for path in (where["ui"], where["icon"], *where["sample"]):
        assert Path(path).is_file() and Path(path).is_relative_to(installed), path
