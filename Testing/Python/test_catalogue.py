"""The model catalogue: catalogue.json agrees with the cards; weights not in the package are downloaded on first use
(resumed, checked, moved into place whole) from a local HTTP server; models are installed, listed and removed."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from MedicalAnomalyDetectionLib import catalogue, cli
from MedicalAnomalyDetectionLib.bundle import CARD_FILE, WEIGHTS_FILE, bundle_folder, load_bundle, read_card, \
    save_bundle, sha256_of
from MedicalAnomalyDetectionLib.catalogue import CATALOGUE_FILE, read_catalogue, write_catalogue
from MedicalAnomalyDetectionLib.installation import install_model, remove_model
from MedicalAnomalyDetectionLib.errors import InputError

from conftest import tiny_card
from weights_server import closed_port, serving

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "Resources" / "Models"
LARGE_BYTES = 5_000_000
# Weights over 5 MB committed before the rule (docs/models.md): git blob ids; any other large weights must be released
GRANDFATHERED = {"Resources/Models/pathoscope-flair/weights.pt": "ebaa91a9111b6e0e2fd847e9bf69e45b16099d25",
                 "Resources/Models/scrps-t1/weights.pt": "b33ea532033c1e0ae416a07f1003e99c20da96df"}


# The repository's catalogue -----------------------------------------------------------------------------------------

def test_catalogue_agrees_with_every_card():
    entries = read_catalogue(MODELS)
    folders = sorted(p for p in MODELS.iterdir() if (p / CARD_FILE).exists())
    assert sorted(entries) == [p.name for p in folders] and len(entries) >= 11
    for folder in folders:
        card, entry, weights = read_card(folder), entries[folder.name], folder / WEIGHTS_FILE
        assert (entry.name, entry.version, entry.modality, entry.method, entry.sha256, entry.licence) == \
               (card.name, card.version, card.modality, card.method, card.sha256, card.licence), folder.name
        if card.sha256 is None:
            assert entry.source == catalogue.BUNDLED and entry.size == 0
        elif weights.exists():  # a released model's weights may be absent from the tree
            assert entry.size == weights.stat().st_size and sha256_of(weights) == entry.sha256, folder.name
        if entry.source == catalogue.BUNDLED:
            assert card.sha256 is None or weights.exists(), folder.name
        else:
            assert entry.source == f"{catalogue.DEFAULT_BASE_URL}/{folder.name}-{card.version}.pt"
    assert {n for n, e in entries.items() if e.source == catalogue.BUNDLED} == \
           {"patchgan-flair", "patchgan-t1", "intensity-flair", "intensity-t1"}


def test_catalogue_is_what_the_maintainer_command_writes(tmp_path):
    for folder in (p for p in MODELS.iterdir() if (p / CARD_FILE).exists()):
        (tmp_path / folder.name).mkdir()
        shutil.copyfile(folder / CARD_FILE, tmp_path / folder.name / CARD_FILE)
        if (folder / WEIGHTS_FILE).exists():
            (tmp_path / folder.name / WEIGHTS_FILE).symlink_to(folder / WEIGHTS_FILE)
    shutil.copyfile(MODELS / CATALOGUE_FILE, tmp_path / CATALOGUE_FILE)
    assert catalogue.main(["--models-dir", str(tmp_path)]) == 0
    assert (tmp_path / CATALOGUE_FILE).read_text() == (MODELS / CATALOGUE_FILE).read_text()


def test_wheel_carries_the_weights_of_bundled_models_only():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = package_data["MedicalAnomalyDetectionLib.bundled_models"]
    weights = {p.split("/")[0] for p in patterns if p.endswith("/" + WEIGHTS_FILE)}
    bundled = {e.name for e in read_catalogue(MODELS).values() if e.source == catalogue.BUNDLED and e.sha256}
    assert weights == bundled and {CATALOGUE_FILE, "*/" + CARD_FILE} <= set(patterns)


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="not a git checkout")
def test_no_new_large_weights_in_git():
    listed = subprocess.run(["git", "ls-files", "-s", "--", "Resources/Models"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout.splitlines()
    for line in listed:
        meta, path = line.split("\t")
        blob = meta.split()[1]
        size = int(subprocess.run(["git", "cat-file", "-s", blob], cwd=REPO, capture_output=True, text=True,
                                  check=True).stdout)
        if size > LARGE_BYTES:
            assert GRANDFATHERED.get(path) == blob, f"{path} ({size} bytes) must be a release asset (docs/models.md)"


def test_source_checkout_finds_every_model_offline(tmp_path, monkeypatch):
    monkeypatch.delenv("MAD_MODELS_DIR", raising=False)
    monkeypatch.setenv("MAD_USER_MODELS_DIR", str(tmp_path / "user"))
    monkeypatch.setenv(catalogue.BASE_URL_ENV, f"http://127.0.0.1:{closed_port()}")
    for name in read_catalogue(MODELS):
        assert bundle_folder(name) == MODELS / name
    assert not (tmp_path / "user").exists()


# Downloads from a local server ---------------------------------------------------------------------------------------

@pytest.fixture
def server():
    with serving() as httpd:
        yield httpd


def _state(seed: int) -> dict:
    return {"reconstructor.w": torch.arange(2000, dtype=torch.float32) * seed}  # ~8 KB


@pytest.fixture
def models(tmp_path, monkeypatch, server):
    """A package's models folder as a wheel has it: ``small`` bundled with its weights; ``big`` catalogued with its
    card only, its weights served at /assets/big-1.0.pt; the user folder does not exist yet."""
    packaged, user = tmp_path / "packaged", tmp_path / "home" / "Models"
    small, big = tiny_card("small"), tiny_card("big")
    big.version = "1.0"
    save_bundle(packaged / "small", small, _state(1))
    save_bundle(packaged / "big", big, _state(2))
    write_catalogue(packaged, bundled=("small",))
    weights = (packaged / "big" / WEIGHTS_FILE).read_bytes()
    (packaged / "big" / WEIGHTS_FILE).unlink()
    server.state["files"]["/assets/big-1.0.pt"] = weights
    monkeypatch.setenv("MAD_MODELS_DIR", str(packaged))
    monkeypatch.setenv("MAD_USER_MODELS_DIR", str(user))
    monkeypatch.setenv(catalogue.BASE_URL_ENV, f"http://127.0.0.1:{server.server_address[1]}/assets/")
    return {"packaged": packaged, "user": user, "weights": weights, "server": server, "state": server.state}


def test_catalogue_lines_of_the_fixture(models):
    entries = read_catalogue()
    assert entries["small"].source == "bundled" and entries["small"].url is None
    assert entries["big"].source == f"{catalogue.DEFAULT_BASE_URL}/big-1.0.pt"
    assert entries["big"].url == f"http://127.0.0.1:{models['server'].server_address[1]}/assets/big-1.0.pt"
    assert entries["big"].size == len(models["weights"])
    assert entries["big"].sha256 == hashlib.sha256(models["weights"]).hexdigest()


def test_first_use_downloads_checks_and_installs(models):
    heard = []
    bundle = load_bundle("big", progress=lambda fraction, stage: heard.append((fraction, stage)))
    target = models["user"] / "big"
    assert bundle.path == target and (target / WEIGHTS_FILE).read_bytes() == models["weights"]
    assert (target / CARD_FILE).read_bytes() == (models["packaged"] / "big" / CARD_FILE).read_bytes()
    assert torch.equal(bundle.state_dict["reconstructor.w"], _state(2)["reconstructor.w"])
    assert heard[-1][0] == 1.0 and heard[-1][1].startswith("downloading big 1.0")
    assert models["state"]["requests"] == [("/assets/big-1.0.pt", None)]
    assert sorted(p.name for p in models["user"].iterdir() if p.is_dir()) == ["big"]  # no staging folder left
    assert load_bundle("big").path == target and len(models["state"]["requests"]) == 1  # no second download
    assert load_bundle("small").path == models["packaged"] / "small"


def test_truncated_download_leaves_no_model_and_resumes_with_a_range(models):
    models["state"]["truncate"] = 3000
    with pytest.raises(InputError, match=rf"could not download model big from http://127\.0\.0\.1:\d+/assets/"
                                         rf"big-1\.0\.pt: the server sent 3000 of {len(models['weights'])} bytes; "
                                         r"run again to resume; install it from a file with `mad-detect "
                                         r"--install-model PATH`"):
        load_bundle("big")
    assert not (models["user"] / "big").exists()
    part = models["user"] / ".big-1.0.download" / (WEIGHTS_FILE + ".part")
    assert part.read_bytes() == models["weights"][:3000]
    models["state"]["truncate"] = None
    assert load_bundle("big").path == models["user"] / "big"
    assert models["state"]["requests"][-1] == ("/assets/big-1.0.pt", "bytes=3000-")
    assert (models["user"] / "big" / WEIGHTS_FILE).read_bytes() == models["weights"]
    assert not part.exists()


def test_wrong_bytes_are_refused_and_removed(models):
    wrong = bytearray(models["weights"])
    wrong[-10] ^= 0xFF
    models["state"]["files"]["/assets/big-1.0.pt"] = bytes(wrong)
    with pytest.raises(InputError, match=r"could not download model big .*: the file's sha256 [0-9a-f]{16}… differs "
                                         r"from the catalogue's [0-9a-f]{16}…; install it from a file"):
        load_bundle("big")
    assert [p.name for p in models["user"].iterdir()] == [".big.lock"]  # no model, no part file, no staging


def test_missing_asset_is_a_404(models):
    models["state"]["files"].clear()
    with pytest.raises(InputError) as raised:
        load_bundle("big")
    message = str(raised.value)
    assert message.startswith("could not download model big from http://127.0.0.1:") and "HTTP 404" in message
    assert "\n" not in message and message.endswith("install it from a file with `mad-detect --install-model PATH`")
    assert [p.name for p in models["user"].iterdir()] == [".big.lock"]


def test_unreachable_server(models, monkeypatch):
    monkeypatch.setenv(catalogue.BASE_URL_ENV, f"http://127.0.0.1:{closed_port()}/assets")
    with pytest.raises(InputError, match=r"could not download model big from .*: the server is unreachable "
                                         r"\(.*refused.*\); install it from a file"):
        load_bundle("big")
    assert not (models["user"] / "big").exists()


def test_unwritable_user_folder(models, monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("MAD_USER_MODELS_DIR", str(blocker / "Models"))  # root cannot create a folder under a file
    with pytest.raises(InputError, match=r"cannot write the model folder .*a-file/Models \(Not a directory\); set "
                                         r"MAD_USER_MODELS_DIR to a writable folder"):
        load_bundle("big")
    assert models["state"]["requests"] == []


def test_card_missing_weights_outside_the_catalogue(models):
    card = tiny_card("uncatalogued")
    save_bundle(models["packaged"] / "uncatalogued", card, _state(3))
    (models["packaged"] / "uncatalogued" / WEIGHTS_FILE).unlink()
    with pytest.raises(InputError, match="model bundle uncatalogued has no weights.pt in"):
        load_bundle("uncatalogued")
    assert models["state"]["requests"] == []


def test_failed_update_keeps_the_installed_version(models, caplog):
    load_bundle("big")
    old = (models["user"] / "big" / WEIGHTS_FILE).read_bytes()
    newer = tiny_card("big")
    newer.version = "2.0"
    save_bundle(models["packaged"] / "big", newer, _state(5))  # the package's next release of big
    new_weights = (models["packaged"] / "big" / WEIGHTS_FILE).read_bytes()
    write_catalogue(models["packaged"])
    (models["packaged"] / "big" / WEIGHTS_FILE).unlink()
    assert read_catalogue()["big"].version == "2.0"  # still released: it kept its source
    bundle = load_bundle("big")  # 2.0 is not on the server: 404
    assert bundle.card.version == "1.0" and "using the installed version 1.0 of big" in caplog.text
    assert (models["user"] / "big" / WEIGHTS_FILE).read_bytes() == old
    models["state"]["files"]["/assets/big-2.0.pt"] = new_weights
    assert load_bundle("big").card.version == "2.0"
    assert (models["user"] / "big" / WEIGHTS_FILE).read_bytes() == new_weights
    assert sorted(p.name for p in models["user"].iterdir() if p.is_dir()) == ["big"]


# Installing, listing, removing ---------------------------------------------------------------------------------------

def test_install_from_a_weights_file(models, tmp_path):
    source = tmp_path / "big-1.0.pt"
    source.write_bytes(models["weights"])
    assert install_model(source) == models["user"] / "big"
    assert load_bundle("big").path == models["user"] / "big" and models["state"]["requests"] == []
    with pytest.raises(InputError, match="big 1.0 is installed already"):
        install_model("big")


def test_install_rejects_what_is_not_a_bundle(models, tmp_path):
    stray = tmp_path / "notes.pt"
    stray.write_bytes(b"not weights at all")
    with pytest.raises(InputError, match=r"notes\.pt is not a model bundle: neither a folder with card\.json nor "
                                         r"the weights of a catalogued model"):
        install_model(stray)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="model bundle has no card.json"):
        install_model(tmp_path / "empty")
    with pytest.raises(InputError, match="nope is neither a catalogued model"):
        install_model("nope")
    with pytest.raises(InputError, match="small ships with the package"):
        install_model("small")
    assert not models["user"].exists() or not any(models["user"].iterdir())


def test_install_a_bundle_folder_and_remove_it(models, tmp_path):
    folder = save_bundle(tmp_path / "mine", tiny_card("mine"), _state(7))
    assert install_model(folder) == models["user"] / "mine"
    assert sha256_of(models["user"] / "mine" / WEIGHTS_FILE) == read_card(folder).sha256
    clash = save_bundle(tmp_path / "other", tiny_card("small"), _state(8))
    with pytest.raises(InputError, match="a different model named small ships with the package"):
        install_model(clash)
    assert remove_model("mine") == models["user"] / "mine" and not (models["user"] / "mine").exists()
    with pytest.raises(InputError, match=r"small ships with the package \(.*\) and cannot be removed"):
        remove_model("small")
    with pytest.raises(InputError, match="big is not downloaded; nothing to remove"):
        remove_model("big")
    with pytest.raises(InputError, match="no model nope in the user model folder"):
        remove_model("nope")


def test_command_line_manages_models(models, capsys):
    assert cli.main(["--list-models"]) == 0
    listed = capsys.readouterr().out
    big_line = next(line for line in listed.splitlines() if line.startswith("big "))
    assert "not downloaded: http://127.0.0.1:" in big_line and "big-1.0.pt" in big_line
    assert str(models["packaged"] / "small") in listed and "licence: test" in listed
    assert cli.main(["--install-model", "big"]) == 0
    captured = capsys.readouterr()
    assert "installed big in" in captured.out and "downloading big 1.0" in captured.err
    assert cli.main(["--list-models"]) == 0
    assert str(models["user"] / "big") in capsys.readouterr().out
    assert cli.main(["--remove-model", "small"]) == 1
    error = capsys.readouterr().err.strip()
    assert error == f"mad-detect: error: small ships with the package ({models['packaged'] / 'small'}) and " \
                    f"cannot be removed"
    assert cli.main(["--remove-model", "big"]) == 0 and not (models["user"] / "big").exists()
    with pytest.raises(SystemExit) as usage:
        cli.main(["--list-models", "scan.nii.gz"])
    assert usage.value.code == 2


def test_detection_offline_says_how_to_install(models, capsys, tmp_path):
    models["state"]["files"].clear()
    assert cli.main([str(tmp_path / "scan.nii.gz"), "--model", "big", "--output-dir", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("mad-detect: error: could not download model big from http://127.0.0.1:")
    assert error.endswith("HTTP 404 Not Found; install it from a file with `mad-detect --install-model PATH`")
    assert json.loads((models["packaged"] / CATALOGUE_FILE).read_text())["format"] == 1
