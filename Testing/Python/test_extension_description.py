"""MedicalAnomalyDetection.json, the file submitted to the Slicer Extensions Index, is valid against the index's schema
and agrees with the top-level CMakeLists.txt, and the rules the index's checker (Slicer/ExtensionsIndex
scripts/check_description_files.py) applies to a new extension hold wherever they can be checked offline.

The checker also fetches the icon and screenshot URLs and the repository's GitHub topics: here each raw URL is mapped
to the file of this repository it will serve (tracked by git, a real PNG) instead. See docs/slicer.md, *Extensions
Index checklist*.
"""

import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest

REPO = Path(__file__).resolve().parents[2]
DESCRIPTION = REPO / "MedicalAnomalyDetection.json"
SCHEMA = REPO / "Testing" / "ExtensionsIndex" / "slicer-extension-catalog-entry-schema-v1.0.2.json"

# The index's accepted categories (ACCEPTED_EXTENSION_CATEGORIES in scripts/check_description_files.py, Slicer/
# ExtensionsIndex commit 07f1d1b2781c7dd9f6e2a9f5521b3ed43631724c): a category outside it fails the index's check.
INDEX_CATEGORIES = (
    "Active Learning", "Analysis", "Auto3dgm", "BigImage", "Cardiac", "Chest Imaging Platform", "Conda", "Converters",
    "DICOM", "DSCI", "Developer Tools", "Diffusion", "Examples", "Exporter", "FTV Segmentation", "Filtering",
    "Filtering.Morphology", "Filtering.Vesselness", "Holographic Display", "Image Synthesis", "IGT", "Informatics",
    "Netstim", "Neuroimaging", "Nuclear Medicine", "Orthodontics", "Osteotomy Planning", "Otolaryngology",
    "Photogrammetry", "Pipelines", "Planning", "Printing", "Quantification", "Radiotherapy", "Registration", "Remote",
    "Rendering", "SPHARM", "Segmentation", "Sequences", "Shape Analysis", "Shape Regression", "Shape Visualization",
    "Simulation", "SlicerCMF", "SlicerMorph", "Spectral Imaging", "Supervisely", "Surface Models", "SurfaceLearner",
    "Tomographic Reconstruction", "Tracking", "Tractography", "Training", "Ultrasound", "Utilities",
    "Vascular Modeling Toolkit", "Virtual Reality", "VisSimTools", "Web System Tools", "Wizards",
)
# The index's rules on names: the repository name starts with one of these, the extension name not with "Slicer".
REPOSITORY_PREFIXES = ("Slicer", "Slicer-", "Slicer_", "SlicerExtension-", "SlicerExtension_")
LICENSE_FILE_NAMES = ("LICENSE", "LICENCE", "License.txt", "license.txt", "LICENSE.txt", "COPYING", "COPYING.txt")
HISTORY_LIMIT_MB = 90  # the packed history (.git of a fresh clone), in MiB; the index allows 100 MB for all of a clone
ICON_SIZE = (128, 128)
RESULT_VIEWS = {"docs/images/sample_result_slicer.png", "docs/images/results_view_slicer.png"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def description() -> dict:
    return json.loads(DESCRIPTION.read_text(encoding="utf-8"))


def cmake_text() -> str:
    return (REPO / "CMakeLists.txt").read_text(encoding="utf-8")


def cmake_set(name: str) -> str:
    """The value of ``set(EXTENSION_<name> ...)``: a quoted string (closing quote right before the parenthesis, the
    form the index's checker parses) or an unquoted word list."""
    found = re.findall(rf'^\s*set\(EXTENSION_{name}\s+(?:"([^"]*)"|([^")\s][^")]*))\)\s*$', cmake_text(), re.M)
    assert len(found) == 1, f"expected one set(EXTENSION_{name} ...) line, found {len(found)}"
    quoted, unquoted = found[0]
    value = quoted or unquoted
    assert value.strip() and ";" not in value, f"EXTENSION_{name} is empty or holds a ';' (a CMake list separator)"
    return value


def github_repository(url: str) -> tuple[str, str]:
    """(owner, name) of a github.com URL, without .git or a fragment."""
    parts = urlsplit(url)
    assert parts.netloc == "github.com", url
    owner, name = parts.path.strip("/").split("/")[:2]
    return owner, name.removesuffix(".git")


def raw_url_to_repository_path(url: str) -> str:
    """The path in this repository that a raw.githubusercontent.com URL of the scm repository and revision serves."""
    metadata = description()
    owner, name = github_repository(metadata["scm_url"])
    base = f"https://raw.githubusercontent.com/{owner}/{name}/{metadata['scm_revision']}/"
    assert url.startswith(base), f"{url} is not a raw URL of {owner}/{name} at {metadata['scm_revision']}"
    return url[len(base):]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR", f"{path} is not a PNG file"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def git_tracked(paths: list[str]) -> set[str]:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--", *paths], capture_output=True,
                            check=True).stdout.decode()
    return {p for p in listed.split("\0") if p}


def test_description_file_is_valid_against_the_index_schema():
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    metadata = description()
    jsonschema.validate(metadata, schema)
    # $schema names exactly the schema version stored here (the index's checker downloads that URL)
    assert metadata["$schema"] == schema["$id"]
    assert metadata["$schema"].split("#")[0].endswith("/" + SCHEMA.name)
    # the schema admits no other key: homepage, icon and screenshots belong in CMakeLists.txt only
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**metadata, "homepage": "https://example.org"}, schema)


def test_description_file_has_the_index_layout():
    raw = DESCRIPTION.read_bytes()
    assert b"\r" not in raw and b"\t" not in raw, "LF line endings only, no tabs (the index's checks)"
    # the index's prettier layout: two-space indent, one array item per line, a final newline; keys sorted as in
    # the other description files
    assert raw.decode("utf-8") == json.dumps(description(), indent=2, sort_keys=True) + "\n"


def test_extension_and_repository_names_follow_the_index_rules():
    metadata = description()
    extension_name = DESCRIPTION.stem
    project = re.findall(r"^\s*project\(\s*([^\s)]+)", cmake_text(), re.M | re.I)
    assert project == [extension_name], "the CMake project() name must be the description file's name"
    assert not extension_name.lower().startswith("slicer")
    scm = urlsplit(metadata["scm_url"])
    assert scm.scheme in ("https", "git") and scm.netloc
    owner, name = github_repository(metadata["scm_url"])
    assert name.startswith(REPOSITORY_PREFIXES) and name.removeprefix("Slicer") == extension_name
    assert github_repository(cmake_set("HOMEPAGE")) == (owner, name), "homepage and scm_url name different repositories"
    assert metadata["scm_revision"] == "main"  # a branch, not a hash: updates need no new pull request


def test_category_and_dependencies_agree_with_cmake():
    metadata = description()
    assert metadata["category"] == cmake_set("CATEGORY")
    assert metadata["category"] in INDEX_CATEGORIES
    assert metadata["build_dependencies"] == cmake_set("DEPENDS").split() == ["PyTorch"]
    assert metadata.get("build_subdirectory", ".") == "."  # not a superbuild
    assert cmake_set("CONTRIBUTORS")


def test_description_is_short_and_names_the_licences():
    text = cmake_set("DESCRIPTION")
    sentences = re.findall(r"[.!?](?:\s|$)", text)
    assert 1 <= len(sentences) <= 2 and text.endswith("."), "the index asks for a 1-2 sentence description"
    assert "Apache-2.0" in text
    cards = [json.loads(p.read_text()) for p in sorted((REPO / "Resources" / "Models").glob("*/card.json"))]
    assert cards
    if any(card["licence"].get("non_commercial") for card in cards):
        assert "non-commercial" in text, "bundled weights are non-commercial: the description must say so"


def test_icon_and_screenshots_are_pngs_of_this_repository():
    icon = raw_url_to_repository_path(cmake_set("ICONURL"))
    screenshots = [raw_url_to_repository_path(url) for url in cmake_set("SCREENSHOTURLS").split()]
    assert screenshots and len(set(screenshots)) == len(screenshots)
    assert RESULT_VIEWS & set(screenshots), "the result view must be among the screenshots"
    assert screenshots[0] in RESULT_VIEWS, "the result view comes first"
    paths = [icon, *screenshots]
    for path in paths:
        assert (REPO / path).is_file(), path
        width, height = png_size(REPO / path)
        assert width >= 64 and height >= 64, path
    assert png_size(REPO / icon) == ICON_SIZE
    assert git_tracked(paths) == set(paths), "a URL names a file that git does not track (GitHub would answer 404)"


def test_licence_file_is_apache_2():
    present = [name for name in LICENSE_FILE_NAMES if (REPO / name).is_file()]
    assert present == ["LICENSE"]
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    for phrase in ("Apache License", "Version 2.0, January 2004", "http://www.apache.org/licenses/",
                   "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION", "3. Grant of Patent License.",
                   "9. Accepting Warranty or Additional Liability.", "END OF TERMS AND CONDITIONS",
                   "Copyright 2026 MedicalAnomalyDetection contributors"):
        assert phrase in text, phrase
    assert "[yyyy]" not in text and len(text) > 10000
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^license\s*=\s*\{\s*text\s*=\s*"Apache-2.0"\s*\}', pyproject, re.M)


def test_homepage_names_the_extension_shows_a_picture_and_the_licence():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert readme.startswith("# MedicalAnomalyDetection\n")
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", readme)
    assert any(p in RESULT_VIEWS for p in pictures) and all((REPO / p).is_file() for p in pictures)
    assert re.search(r"Apache(-| License,? (Version )?)2\.0", readme), "the homepage must name the licence"


def history_mib(repo: Path) -> float:
    """Compressed size of every object reachable from any ref, each counted once: what a clone from a host that
    repacks (GitHub) downloads. `git count-objects` would instead add up the packs as this clone happens to store them
    (a clone made by copying a server's object folder holds each pushed pack, objects repeated across them)."""
    objects = subprocess.run(["git", "-C", str(repo), "rev-list", "--objects", "--all"],
                             capture_output=True, text=True, check=True).stdout
    ids = "".join(sorted({line.split(" ", 1)[0] + "\n" for line in objects.splitlines() if line}))
    sizes = subprocess.run(["git", "-C", str(repo), "cat-file", "--batch-check=%(objectsize:disk)"],
                           input=ids, capture_output=True, text=True, check=True).stdout.split()
    return sum(int(size) for size in sizes) / 2**20


def test_history_size_counts_each_object_once(tmp_path):
    """A pack stored twice (as a server's object folder may hold it) doubles `git count-objects` but not the history."""
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "blob.bin").write_bytes(bytes(range(256)) * 4096 + b"x" * 100000)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "add", "blob.bin"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "one"], check=True)
    subprocess.run([*git, "repack", "-q", "-a", "-d"], check=True)
    once = history_mib(repo)
    pack_dir = repo / ".git" / "objects" / "pack"
    for path in pack_dir.glob("pack-*"):
        shutil.copy(path, pack_dir / path.name.replace("pack-", "pack-0copy"))
    assert len(list(pack_dir.glob("*.pack"))) == 2
    assert history_mib(repo) == pytest.approx(once) and once > 0


def test_history_stays_small_enough_for_the_index():
    """The index's checker clones the repository and adds up every file under the clone, .git included, against
    its 100 MB limit. The history is what no later commit can shrink, so it must stay under HISTORY_LIMIT_MB; the
    weights in the tree leave it once published as release assets (docs/models.md)."""
    assert history_mib(REPO) <= HISTORY_LIMIT_MB
