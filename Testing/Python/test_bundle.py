"""Bundles load only when card, checksum and weights agree, and never by unpickling arbitrary objects."""

import json

import pytest
import torch

from MedicalAnomalyDetectionLib.bundle import CARD_FILE, WEIGHTS_FILE, load_bundle, save_bundle, sha256_of
from MedicalAnomalyDetectionLib.card import ModelCard
from MedicalAnomalyDetectionLib.errors import InputError
from MedicalAnomalyDetectionLib.methods import build_method
from MedicalAnomalyDetectionLib.networks.unet import Reconstructor

from conftest import tiny_card


def test_round_trip_keeps_card_and_weights(tiny_bundle_dir):
    bundle = load_bundle(tiny_bundle_dir)
    assert bundle.card.sha256 == sha256_of(tiny_bundle_dir / WEIGHTS_FILE)
    assert ModelCard.from_dict(bundle.card.to_dict()) == bundle.card
    method = build_method(bundle, torch.device("cpu"))
    expected = torch.load(tiny_bundle_dir / WEIGHTS_FILE, weights_only=True)
    for key, value in method.reconstructor.state_dict().items():
        assert torch.equal(value, expected[f"reconstructor.{key}"])


def test_load_by_card_path(tiny_bundle_dir):
    assert load_bundle(tiny_bundle_dir / CARD_FILE).card.name == "tiny"


def test_missing_bundle(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_bundle(tmp_path / "nope")


def test_checksum_mismatch_is_refused(tiny_bundle_dir):
    weights = tiny_bundle_dir / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(InputError, match="checksum"):
        load_bundle(tiny_bundle_dir)


def _rewrite_weights(folder, payload: bytes) -> None:
    (folder / WEIGHTS_FILE).write_bytes(payload)
    card = json.loads((folder / CARD_FILE).read_text())
    card["sha256"] = sha256_of(folder / WEIGHTS_FILE)
    (folder / CARD_FILE).write_text(json.dumps(card))


class Payload:
    """An arbitrary object: loading it would need unpickling code."""

    def __reduce__(self):
        return (print, ("this must never run",))


def test_weights_needing_arbitrary_unpickling_are_refused(tiny_bundle_dir, tmp_path):
    torch.save({"reconstructor.x": Payload()}, tmp_path / "evil.pt")
    _rewrite_weights(tiny_bundle_dir, (tmp_path / "evil.pt").read_bytes())
    with pytest.raises(InputError, match="unpickling"):
        load_bundle(tiny_bundle_dir)


def test_corrupt_weights_are_refused(tiny_bundle_dir):
    _rewrite_weights(tiny_bundle_dir, b"garbage" * 10)
    with pytest.raises(InputError, match="corrupt|unpickling"):
        load_bundle(tiny_bundle_dir)


def test_weights_not_matching_the_card_are_refused(tmp_path):
    state = {f"reconstructor.{k}": v for k, v in Reconstructor((8, 16)).state_dict().items()}
    folder = save_bundle(tmp_path / "mismatch", tiny_card(), state)  # card says widths (4, 8)
    with pytest.raises(InputError, match="do not match"):
        build_method(load_bundle(folder), torch.device("cpu"))


@pytest.mark.parametrize("text, message", [("{not json", "not valid JSON"), ('{"name": "x"}', "malformed"),
                                           ("[1, 2]", "not a JSON object")])
def test_malformed_cards_are_refused(tiny_bundle_dir, text, message):
    (tiny_bundle_dir / CARD_FILE).write_text(text)
    with pytest.raises(InputError, match=message):
        load_bundle(tiny_bundle_dir)


def test_unknown_method_is_refused(tmp_path):
    card = tiny_card(method="nonexistent")
    with pytest.raises(InputError, match="unknown method"):
        build_method(load_bundle(save_bundle(tmp_path / "x", card, None)), torch.device("cpu"))


def test_malformed_hyperparameters_and_preprocessing_are_refused(tmp_path):
    card = tiny_card()
    del card.hyperparameters["widths"]
    with pytest.raises(InputError, match="malformed hyper-parameters"):
        build_method(load_bundle(save_bundle(tmp_path / "a", card, None)), torch.device("cpu"))
    data = tiny_card().to_dict()
    data["preprocessing"]["size"] = [32]
    with pytest.raises(InputError, match="input size"):
        ModelCard.from_dict(data)
