"""The benchmark's network-only timing scores exactly the volume's brain slices, in batches as detect does."""

import torch

from MedicalAnomalyDetectionLib.inference import stage_volume
from MedicalAnomalyDetectionLib.methods import build_method
from training.bench import machine, network_seconds

from conftest import make_image, head_array


def test_network_timing_scores_every_brain_slice_once_a_repeat(tiny_bundle):
    method = build_method(tiny_bundle, torch.device("cpu"))
    prepared = stage_volume(make_image(head_array()), tiny_bundle).prepared
    batches = []
    score = method.score
    method.score = lambda slices, mask: batches.append(len(slices)) or score(slices, mask)
    network_seconds(method, prepared, batch_size=5, repeats=2)
    brain = int(prepared.mask.any(axis=(1, 2)).sum())
    assert sum(batches) == 2 * brain and max(batches) <= 5
    assert machine()["torch_threads"] == torch.get_num_threads()
