"""mad-detect: the files it promises, and one-line errors with exit status 1."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from MedicalAnomalyDetectionLib import cli
from MedicalAnomalyDetectionLib.bundle import bundled_models_dir, read_card
from MedicalAnomalyDetectionLib.cli import main

from conftest import head_array, make_image


@pytest.fixture
def volume_file(tmp_path):
    path = tmp_path / "case.nii.gz"
    sitk.WriteImage(make_image(head_array()), str(path))
    return path


def test_writes_map_label_scores_and_report(volume_file, tiny_bundle_dir, tmp_path):
    out = tmp_path / "out"
    assert main([str(volume_file), "--model", str(tiny_bundle_dir), "--output-dir", str(out), "--device", "cpu"]) == 0
    image = sitk.ReadImage(str(volume_file))
    anomaly = sitk.ReadImage(str(out / "anomaly_map.nii.gz"))
    label = sitk.ReadImage(str(out / "anomaly_label.nii.gz"))
    assert anomaly.GetSize() == label.GetSize() == image.GetSize()
    assert anomaly.GetPixelID() == sitk.sitkFloat32 and label.GetPixelID() == sitk.sitkUInt8
    report = json.loads((out / "report.json").read_text())
    assert {"volume_score", "threshold", "model", "seconds"} <= set(report)
    assert report["model"] == "tiny" and report["threshold"] == 0.2
    rows = list(csv.DictReader(open(out / "slice_scores.csv")))
    assert len(rows) == image.GetSize()[2]
    scores = {int(r["slice_index"]): float(r["score"]) for r in rows}
    assert scores[report["most_anomalous_slice"]] == pytest.approx(report["volume_score"], rel=1e-4)
    assert max(scores.values()) >= report["volume_score"] > 0
    assert 0 <= report["flagged_slices"] <= sum(score >= report["slice_threshold"] for score in scores.values())
    assert report["anomalous_voxels"] == int(sitk.GetArrayFromImage(label).sum())


def test_without_model_it_runs_the_default_flair_model(volume_file, tiny_bundle_dir, tmp_path, monkeypatch):
    assert read_card(bundled_models_dir() / cli.DEFAULT_MODEL).modality == "flair"
    monkeypatch.setattr(cli, "DEFAULT_MODEL", str(tiny_bundle_dir))  # the same path, with a network fit for a test
    out = tmp_path / "out"
    assert main([str(volume_file), "--output-dir", str(out), "--device", "cpu"]) == 0
    assert json.loads((out / "report.json").read_text())["model"] == "tiny"


def _error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return lines[-1]


def test_missing_input(tiny_bundle_dir, tmp_path, capsys):
    code = main([str(tmp_path / "missing.nii.gz"), "--model", str(tiny_bundle_dir), "--output-dir",
                 str(tmp_path / "o")])
    assert code == 1 and "input not found" in _error_line(capsys)


def test_missing_model(volume_file, tmp_path, capsys):
    assert main([str(volume_file), "--model", "no-such-model", "--output-dir", str(tmp_path / "o")]) == 1
    assert "model bundle not found" in _error_line(capsys)


def test_2d_input(tiny_bundle_dir, tmp_path, capsys):
    path = tmp_path / "flat.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.rand(32, 32).astype(np.float32)), str(path))
    assert main([str(path), "--model", str(tiny_bundle_dir), "--output-dir", str(tmp_path / "o")]) == 1
    assert "2D" in _error_line(capsys)


def test_unwritable_output_dir(volume_file, tiny_bundle_dir, read_only_dir, capsys):
    assert main([str(volume_file), "--model", str(tiny_bundle_dir), "--output-dir", str(read_only_dir / "o")]) == 1
    assert "not writable" in _error_line(capsys)
    assert list(read_only_dir.iterdir()) == []


def test_output_dir_that_is_a_file(volume_file, tiny_bundle_dir, tmp_path, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    assert main([str(volume_file), "--model", str(tiny_bundle_dir), "--output-dir", str(blocker / "o")]) == 1
    assert "not writable" in _error_line(capsys)


def test_outputs_never_overwrite_the_input(tiny_bundle_dir, tmp_path, capsys):
    path = tmp_path / "anomaly_map.nii.gz"
    sitk.WriteImage(make_image(head_array()), str(path))
    before = path.read_bytes()
    assert main([str(path), "--model", str(tiny_bundle_dir), "--output-dir", str(tmp_path)]) == 1
    assert "overwrite an input" in _error_line(capsys)
    assert path.read_bytes() == before


def test_console_entry_point_runs_as_module(volume_file, tiny_bundle_dir, tmp_path):
    completed = subprocess.run([sys.executable, "-m", "MedicalAnomalyDetectionLib", str(volume_file), "--model",
                                str(tiny_bundle_dir), "--output-dir", str(tmp_path / "m"), "--device", "cpu"],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["threshold"] == 0.2


def test_batch_size_must_be_positive(volume_file, tiny_bundle_dir, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main([str(volume_file), "--model", str(tiny_bundle_dir), "--output-dir", str(tmp_path / "o"),
              "--batch-size", "0"])
    assert exit_info.value.code == 2
