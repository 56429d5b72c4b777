"""Every row of the bad-input table (``bad_input_cases.py``, rendered as ``docs/bad_inputs.md``) through ``mad-detect``
and, where the row has a node form, through the Slicer Logic on a real MRML scene."""

from __future__ import annotations

import json
import re
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MedicalAnomalyDetectionLib.cli import main
from MedicalAnomalyDetectionLib.errors import InputError
from MedicalAnomalyDetectionLib.volume_io import read_volume, validate_volume

from bad_input_cases import CASES, Outcome, Payload, payload_marker

REPO = Path(__file__).resolve().parents[2]
LARGE_SLICES = 32
LARGE_PEAK_MIB = 1024  # 512x512x32 measured at about 550 MiB (intensity-flair), most of it torch and SimpleITK


def _rows(form: str) -> list:
    return [pytest.param(case, variant, id=case.key if variant is None else f"{case.key}[{variant}]")
            for case in CASES if getattr(case, form) is not None for variant in case.variants]


def _model(case, folder: Path, variant, tiny_bundle_dir: Path, intensity_bundle) -> Path:
    if case.bundle is None:
        return intensity_bundle.path
    (folder / "model").mkdir()
    return case.bundle(folder / "model", tiny_bundle_dir, variant)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _same_grid(image: sitk.Image, reference: sitk.Image) -> None:
    assert image.GetSize() == reference.GetSize()
    np.testing.assert_allclose(image.GetSpacing(), reference.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(image.GetDirection(), reference.GetDirection(), atol=1e-6)


@pytest.mark.parametrize("case, variant", _rows("make"))
def test_through_mad_detect(case, variant, tmp_path, tiny_bundle_dir, intensity_bundle, monkeypatch, capsys,
                            caplog):
    folder = tmp_path / "case"
    folder.mkdir()
    model = _model(case, folder, variant, tiny_bundle_dir, intensity_bundle)
    args = case.make(folder, variant)
    out = folder / "out"
    if case.patch is not None:
        case.patch(monkeypatch, variant)
    before = _files(folder)

    code = main([args[0], "--model", str(model), "--output-dir", str(out), *args[1:]])
    stderr = capsys.readouterr().err
    assert not list(tmp_path.rglob(payload_marker(folder).name))  # no code from a weights file ever ran
    assert not list(folder.rglob(".partial-*"))
    if case.refused:
        last = [line for line in stderr.splitlines() if line.strip()][-1]
        assert code == 1 and last.startswith("mad-detect: error: ") and case.sees in last, stderr
        assert _files(folder) == {k: v for k, v in before.items() if k not in case.removes}  # as they were
        return
    assert code == 0, stderr
    series = args[args.index("--series") + 1] if "--series" in args else None
    reference = validate_volume(read_volume(args[0], series))
    anomaly = sitk.ReadImage(str(out / "anomaly_map.nii.gz"))
    _same_grid(anomaly, reference)
    _same_grid(sitk.ReadImage(str(out / "anomaly_label.nii.gz")), reference)
    assert np.isfinite(sitk.GetArrayViewFromImage(anomaly)).all()
    assert {k: v for k, v in _files(folder).items() if not k.startswith("out/")} == before  # input unchanged
    report = json.loads((out / "report.json").read_text())
    if case.check is not None:
        case.check(Outcome(map=sitk.GetArrayFromImage(anomaly), device=report["device"], warnings=report["warnings"],
                           text=stderr + caplog.text, bundle=intensity_bundle), variant)


@pytest.mark.parametrize("case, variant", _rows("node"))
def test_through_the_slicer_logic(case, variant, tmp_path, tiny_bundle_dir, intensity_bundle, monkeypatch, caplog):
    slicer = pytest.importorskip("slicer")
    from slicer_fixtures import ijk_to_ras, new_scene, node_ids

    from MedicalAnomalyDetectionSlicer.logic import MedicalAnomalyDetectionLogic

    scene, colours = new_scene()
    volume, options = case.node(scene, variant)
    model = _model(case, tmp_path, variant, tiny_bundle_dir, intensity_bundle)
    if case.patch is not None:
        case.patch(monkeypatch, variant)
    ids, voxels = node_ids(scene), slicer.util.arrayFromVolume(volume).copy()
    logic = MedicalAnomalyDetectionLogic()
    if case.refused:
        with pytest.raises(InputError, match=re.escape(case.node_sees or case.sees)):
            logic.process(volume, model=model, **options)
        assert node_ids(scene) == ids
    else:
        outputs = logic.process(volume, model=model, **options)
        anomaly = slicer.util.arrayFromVolume(outputs.anomalyMap).copy()
        for node in (outputs.anomalyMap, outputs.anomalyLabel):
            np.testing.assert_allclose(ijk_to_ras(node), ijk_to_ras(volume), atol=1e-9)
            assert node.GetImageData().GetDimensions() == volume.GetImageData().GetDimensions()
        assert np.isfinite(anomaly).all()
        if case.check is not None:
            case.check(Outcome(map=anomaly, device=outputs.device, warnings=outputs.warnings,
                               text="\n".join([*outputs.warnings, caplog.text]), bundle=intensity_bundle), variant)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), voxels)
    assert not list(tmp_path.rglob(payload_marker(tmp_path).name))
    del colours


def test_the_pickle_payload_is_live(tmp_path):
    """The malicious weights of the table are real: an unguarded load runs their payload."""
    path = tmp_path / "weights.pt"
    torch.save({"w": Payload(payload_marker(tmp_path))}, path)
    torch.load(path, weights_only=False)
    assert payload_marker(tmp_path).exists()


def test_large_volume_memory_stays_bounded():
    """The 512x512x400 row, on 32 slices of the same size (the full size is measured by the same script)."""
    completed = subprocess.run([sys.executable, str(REPO / "docs" / "measure_peak_rss.py"), "--size", "512", "512",
                                str(LARGE_SLICES), "--model", "intensity-flair"], capture_output=True, text=True,
                               timeout=300)
    assert completed.returncode == 0, completed.stderr
    measured = json.loads(completed.stdout)
    assert measured["voxels"] == 512 * 512 * LARGE_SLICES and measured["peak_rss_mib"] < LARGE_PEAK_MIB


def test_every_row_is_tested():
    untested = {case.key for case in CASES if case.make is None and case.node is None}
    assert untested == {"large"}  # tested by test_large_volume_memory_stays_bounded
    assert len({case.key for case in CASES}) == len(CASES)


def test_the_table_in_the_docs_is_current():
    script = runpy.run_path(str(REPO / "docs" / "bad_inputs.py"))
    assert (REPO / "docs" / "bad_inputs.md").read_text(encoding="utf-8") == script["markdown"](), \
        "docs/bad_inputs.md is stale: run python docs/bad_inputs.py"
