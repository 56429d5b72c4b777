"""mad-detect's cohort mode: many inputs in one process, a cohort table, failures that do not stop it, resuming,
reading ahead in a thread, and BIDS datasets in and derivatives out."""

import csv
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MedicalAnomalyDetectionLib.bids import find_images, parse_name
from MedicalAnomalyDetectionLib.cli import main
from MedicalAnomalyDetectionLib.cohort import ahead, distinct_names, items_from_inputs, run_cohort
from MedicalAnomalyDetectionLib.errors import InputError
from MedicalAnomalyDetectionLib.findings import COLUMNS
from MedicalAnomalyDetectionLib.operating_point import operating_point
from MedicalAnomalyDetectionLib.methods import build_method
from training.cli import main as training_main
from training.slice_set import SliceSet

from conftest import head_array, make_image


def _write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(make_image(array), str(path))
    return path


def _table(path, delimiter=","):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle, delimiter=delimiter))


@pytest.fixture
def cohort_folder(tmp_path):
    """Three volumes (one with a bright lesion) and a 2D image that cannot be run."""
    folder = tmp_path / "cohort"
    for seed in range(3):
        _write(folder / f"case{seed}.nii.gz", head_array(seed=seed, blob=(12, 20, 26) if seed == 1 else None))
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).random((32, 32)).astype(np.float32)),
                    str(folder / "flat.nii.gz"))
    return folder


def test_a_folder_gives_a_folder_per_volume_and_a_table_and_goes_on_past_a_failure(cohort_folder, tiny_bundle_dir,
                                                                                      tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(cohort_folder), "--model", str(tiny_bundle_dir), "--output-dir", str(out), "--device", "cpu"]) == 1
    summary = json.loads(capsys.readouterr().out)
    assert (summary["volumes"], summary["done"], summary["failed"]) == (4, 3, 1)
    rows = {row["volume"]: row for row in _table(out / "cohort.csv")}
    assert rows["flat"]["status"] == "failed" and "2D" in rows["flat"]["error"]
    assert not (out / "flat" / "report.json").exists()
    for name in ("case0", "case1", "case2"):
        report = json.loads((out / name / "report.json").read_text())
        assert rows[name]["status"] == "done" and rows[name]["output"] == str(out / name)
        assert float(rows[name]["volume_score"]) == pytest.approx(report["volume_score"])
        assert int(rows[name]["anomalous_voxels"]) == report["anomalous_voxels"]
        assert int(rows[name]["flagged_slices"]) == report["flagged_slices"]
        assert int(rows[name]["region_count"]) == report["region_count"] == len(report["regions"])
        assert float(rows[name]["regions_ml"]) == pytest.approx(sum(r["ml"] for r in report["regions"]), abs=1e-3)
    # the same volume run alone gives the same result as in the cohort
    assert main([str(cohort_folder / "case1.nii.gz"), "--model", str(tiny_bundle_dir), "--output-dir",
                 str(tmp_path / "alone"), "--device", "cpu"]) == 0
    alone = json.loads((tmp_path / "alone" / "report.json").read_text())
    assert alone["volume_score"] == pytest.approx(float(rows["case1"]["volume_score"]), rel=1e-6)
    assert (sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "alone" / "anomaly_map.nii.gz")))
            == sitk.GetArrayFromImage(sitk.ReadImage(str(out / "case1" / "anomaly_map.nii.gz")))).all()


def test_resume_skips_complete_volumes_and_redoes_incomplete_ones(cohort_folder, tiny_bundle_dir, tmp_path):
    (cohort_folder / "flat.nii.gz").unlink()
    out = tmp_path / "out"
    command = [str(cohort_folder), "--model", str(tiny_bundle_dir), "--output-dir", str(out), "--device", "cpu"]
    assert main(command) == 0
    first = _table(out / "cohort.csv")
    stamp = (out / "case0" / "anomaly_map.nii.gz").stat().st_mtime_ns
    (out / "case2" / "report.json").unlink()  # as if killed before its report was written
    assert main(command) == 0
    second = _table(out / "cohort.csv")
    assert [row["status"] for row in second] == ["skipped", "skipped", "done"]
    assert [row["volume_score"] for row in second] == [row["volume_score"] for row in first]
    assert (out / "case0" / "anomaly_map.nii.gz").stat().st_mtime_ns == stamp
    assert main([*command, "--overwrite"]) == 0
    assert [row["status"] for row in _table(out / "cohort.csv")] == ["done"] * 3


def test_outputs_of_another_model_are_not_overwritten(cohort_folder, tiny_bundle_dir, intensity_bundle, tmp_path):
    (cohort_folder / "flat.nii.gz").unlink()
    out = tmp_path / "out"
    assert main([str(cohort_folder), "--model", str(tiny_bundle_dir), "--output-dir", str(out)]) == 0
    assert main([str(cohort_folder), "--model", str(intensity_bundle.path), "--output-dir", str(out)]) == 1
    rows = _table(out / "cohort.csv")
    assert all(row["status"] == "failed" and "outputs of model tiny" in row["error"] for row in rows)


def test_a_rerun_at_another_threshold_redoes_nothing_silently(cohort_folder, tiny_bundle_dir, tmp_path):
    (cohort_folder / "flat.nii.gz").unlink()
    out = tmp_path / "out"
    command = [str(cohort_folder), "--model", str(tiny_bundle_dir), "--output-dir", str(out), "--device", "cpu"]
    assert main(command) == 0
    assert main(command + ["--threshold", "0.01"]) == 1  # not "skipped" with the old labels
    assert all(row["status"] == "failed" and "--overwrite" in row["error"] for row in _table(out / "cohort.csv"))
    assert main(command + ["--threshold", "0.01", "--overwrite"]) == 0
    assert json.loads((out / "case0" / "report.json").read_text())["threshold"] == 0.01


def test_the_table_never_overwrites_the_csv_list_it_reads(tmp_path, tiny_bundle_dir, capsys):
    _write(tmp_path / "in" / "a.nii.gz", head_array(seed=3))
    listing = tmp_path / "in" / "cohort.csv"
    listing.write_text("input\na.nii.gz\n")
    assert main([str(listing), "--model", str(tiny_bundle_dir), "--output-dir", str(tmp_path / "in")]) == 1
    assert listing.read_text() == "input\na.nii.gz\n" and not (tmp_path / "in" / "a").exists()
    assert "refusing to overwrite an input" in capsys.readouterr().err


def test_an_output_folder_that_cannot_be_made_is_one_line(cohort_folder, tiny_bundle_dir, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main([str(cohort_folder), "--model", str(tiny_bundle_dir), "--output-dir", str(blocker / "out")]) == 1
    err = capsys.readouterr().err
    assert "cannot create the output folder" in err and "Traceback" not in err


def test_csv_cohort_with_masks_and_output_folders(tmp_path, tiny_bundle_dir):
    array = head_array(seed=3)
    _write(tmp_path / "in" / "a.nii.gz", array)
    _write(tmp_path / "in" / "a_brain.nii.gz", (array > 0).astype(np.uint8))
    _write(tmp_path / "in" / "b.nii.gz", head_array(seed=4))
    listing = tmp_path / "in" / "cohort.csv"
    listing.write_text("input,brain_mask,output_dir\na.nii.gz,a_brain.nii.gz,first\nb.nii.gz,,\n")
    out = tmp_path / "out"
    assert main([str(listing), "--model", str(tiny_bundle_dir), "--output-dir", str(out)]) == 0
    assert json.loads((out / "first" / "report.json").read_text())["masking"] == "given brain mask"
    assert json.loads((out / "b" / "report.json").read_text())["masking"] != "given brain mask"
    listing.write_text("a.nii.gz,,x,extra\n")
    with pytest.raises(InputError, match="row 1"):
        items_from_inputs([listing], out, "auto")


def test_same_named_files_in_patient_folders_get_their_own_outputs(tmp_path, tiny_bundle_dir):
    for patient, seed in (("patient07", 1), ("patient19", 2)):
        _write(tmp_path / "site" / patient / "flair.nii.gz", head_array(seed=seed))
    out = tmp_path / "out"
    inputs = [str(tmp_path / "site" / p / "flair.nii.gz") for p in ("patient07", "patient19")]
    assert main([*inputs, "--model", str(tiny_bundle_dir), "--output-dir", str(out), "--device", "cpu"]) == 0
    rows = {row["volume"]: row for row in _table(out / "cohort.csv")}
    assert sorted(rows) == ["patient07_flair", "patient19_flair"]
    for name, patient in (("patient07_flair", "patient07"), ("patient19_flair", "patient19")):
        assert rows[name]["input"] == str(tmp_path / "site" / patient / "flair.nii.gz")
        assert rows[name]["output"] == str(out / name)
        assert json.loads((out / name / "report.json").read_text())["volume_score"] == pytest.approx(
            float(rows[name]["volume_score"]))
    assert (json.loads((out / "patient07_flair" / "report.json").read_text())["volume_score"]
            != json.loads((out / "patient19_flair" / "report.json").read_text())["volume_score"])


def test_distinct_names_use_the_fewest_folders_that_tell_paths_apart():
    paths = [Path("/d/siteA/p1/flair.nii.gz"), Path("/d/siteB/p1/flair.nii.gz"), Path("/d/siteA/p2/flair.nii.gz"),
             Path("/d/other/t1.nii.gz"), Path("/d/x/case.nii"), Path("/d/y/z/case.nrrd")]
    assert distinct_names(paths) == ["siteA_p1_flair", "siteB_p1_flair", "siteA_p2_flair", "t1", "x_case", "z_case"]


def test_the_same_file_twice_is_refused(tmp_path, tiny_bundle_dir, capsys):
    path = _write(tmp_path / "x" / "case.nii.gz", head_array())
    assert main([str(path), str(path), "--model", str(tiny_bundle_dir), "--output-dir", str(tmp_path / "out")]) == 1
    assert "same outputs" in capsys.readouterr().err


def test_reading_ahead_keeps_order_errors_and_depth():
    running, most, started = [0], [0], []
    lock = threading.Lock()

    def work(item):
        with lock:
            running[0] += 1
            started.append(item)
        time.sleep(0.01)
        with lock:
            most[0] = max(most[0], running[0])
            running[0] -= 1
        if item == 3:
            raise InputError("three")
        return item * 10

    for depth in (0, 1, 3):
        got, started[:] = [], []
        for index, (item, result) in enumerate(ahead(range(6), work, depth)):
            time.sleep(0.03)  # the consumer is slow: the thread would run far ahead if nothing held it
            assert len(started) <= index + 1 + depth  # never more than `depth` volumes beyond the current one
            try:
                got.append(result())
            except InputError as error:
                got.append(str(error))
        assert got == [0, 10, 20, "three", 40, 50]
    assert most[0] == 1  # one thread does the work ahead


def test_prefetching_changes_nothing_in_the_results(cohort_folder, tiny_bundle, tmp_path):
    (cohort_folder / "flat.nii.gz").unlink()
    method = build_method(tiny_bundle, torch.device("cpu"))
    scores = {}
    for depth in (0, 2):
        items = items_from_inputs([cohort_folder], tmp_path / f"out{depth}", "auto")
        rows = run_cohort(items, tiny_bundle, method, operating_point(tiny_bundle.card), prefetch=depth)
        scores[depth] = [row.volume_score for row in rows]
    assert scores[0] == scores[2] and len(scores[0]) == 3


def test_a_gpu_out_of_memory_in_a_cohort_falls_back_to_the_cpu(cohort_folder, tiny_bundle, tmp_path):
    from bad_input_cases import ExhaustedGPU

    (cohort_folder / "flat.nii.gz").unlink()
    items = items_from_inputs([cohort_folder], tmp_path / "out", "auto")
    rows = run_cohort(items, tiny_bundle, ExhaustedGPU(), operating_point(tiny_bundle.card))
    assert [row.status for row in rows] == ["done"] * 3
    assert {json.loads((tmp_path / "out" / row.volume / "report.json").read_text())["device"] for row in rows} == {
        "cpu (the GPU ran out of memory)"}


@pytest.fixture
def bids_root(tmp_path):
    """sub-01 (sessions 1 and 2) and sub-02 (no sessions), each with FLAIR and T1w, plus files to be ignored."""
    root = tmp_path / "bids"
    root.mkdir()
    (root / "dataset_description.json").write_text(json.dumps({"Name": "toy", "BIDSVersion": "1.10.0"}))
    for seed, folder in enumerate(("sub-01/ses-1/anat", "sub-01/ses-2/anat", "sub-02/anat")):
        entities = "_".join(part for part in folder.split("/")[:-1])
        for suffix in ("FLAIR", "T1w"):
            _write(root / folder / f"{entities}_{suffix}.nii.gz", head_array(seed=seed))
    _write(root / "sub-02/anat/sub-03_FLAIR.nii.gz", head_array())  # name disagrees with its folder
    _write(root / "derivatives/other/sub-01/anat/sub-01_FLAIR.nii.gz", head_array())
    return root


def test_bids_names_and_filters(bids_root):
    image = parse_name(bids_root / "sub-01/ses-1/anat/sub-01_ses-1_acq-fast_run-2_FLAIR.nii.gz")
    assert (image.subject, image.session, image.suffix) == ("01", "1", "FLAIR")
    assert image.stem == "sub-01_ses-1_acq-fast_run-2_FLAIR"
    assert parse_name(bids_root / "sub-01_FLAIR.json") is None and parse_name(bids_root / "notes_FLAIR.nii") is None
    stems = lambda images: [i.stem for i in images]  # noqa: E731
    assert stems(find_images(bids_root, "FLAIR")) == ["sub-01_ses-1_FLAIR", "sub-01_ses-2_FLAIR", "sub-02_FLAIR"]
    assert stems(find_images(bids_root, "T1w", subjects=("sub-01",), sessions=("2",))) == ["sub-01_ses-2_T1w"]
    with pytest.raises(InputError, match="no FLAIR images"):
        find_images(bids_root, "FLAIR", subjects=("09",))
    with pytest.raises(InputError, match="not a BIDS dataset"):
        find_images(bids_root / "sub-01", "FLAIR")


def test_bids_cohort_writes_derivatives(bids_root, tiny_bundle_dir):
    assert main(["--bids", str(bids_root), "--model", str(tiny_bundle_dir), "--subject", "01", "--device", "cpu"]) == 0
    derivatives = bids_root / "derivatives" / "medical-anomaly-detection"
    description = json.loads((derivatives / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Name"] == \
        "medical-anomaly-detection"
    anat = derivatives / "sub-01" / "ses-2" / "anat"
    assert sorted(p.name for p in anat.iterdir()) == [
        "sub-01_ses-2_desc-anomaly_map.json", "sub-01_ses-2_desc-anomaly_map.nii.gz",
        "sub-01_ses-2_desc-anomaly_mask.nii.gz", "sub-01_ses-2_desc-anomaly_regions.tsv",
        "sub-01_ses-2_desc-anomaly_slicescores.tsv",
        "sub-01_ses-2_desc-brain_mask.nii.gz"]
    sidecar = json.loads((anat / "sub-01_ses-2_desc-anomaly_map.json").read_text())
    assert sidecar["Sources"] == ["bids:raw:sub-01/ses-2/anat/sub-01_ses-2_FLAIR.nii.gz"]
    rows = _table(derivatives / "cohort.tsv", "\t")
    assert [row["volume"] for row in rows] == ["sub-01_ses-1_FLAIR", "sub-01_ses-2_FLAIR"]
    assert float(rows[1]["volume_score"]) == pytest.approx(sidecar["volume_score"])
    assert not (derivatives / "sub-02").exists()
    scores = _table(anat / "sub-01_ses-2_desc-anomaly_slicescores.tsv", "\t")
    assert len(scores) == 24 and set(scores[0]) == {"slice_index", "score"}
    regions = _table(anat / "sub-01_ses-2_desc-anomaly_regions.tsv", "\t")
    assert len(regions) == sidecar["region_count"] and (not regions or set(regions[0]) == set(COLUMNS))


def test_derivatives_in_the_raw_root_never_replace_its_description(bids_root, tiny_bundle_dir, capsys):
    description = bids_root / "dataset_description.json"
    description.write_text(json.dumps({"Name": "raw", "BIDSVersion": "1.9.0"}))
    assert main(["--bids", str(bids_root), "--model", str(tiny_bundle_dir), "--output-dir", str(bids_root)]) == 1
    assert json.loads(description.read_text())["Name"] == "raw"
    assert "refusing to overwrite an input" in capsys.readouterr().err


def test_prepare_takes_a_bids_dataset_a_folder_or_a_csv(bids_root, tmp_path):
    tiny = ["--modality", "flair", "--size", "32", "--spacing", "4"]
    (bids_root / "dataset_description.json").write_text(json.dumps({"Name": "toy", "License": "CC0"}))
    assert training_main(["prepare", "--bids", str(bids_root), "--out", str(tmp_path / "b.npz"), *tiny]) == 0
    bids = SliceSet.load(tmp_path / "b.npz")
    assert sorted(set(bids.case_ids)) == ["sub-01_ses-1", "sub-01_ses-2", "sub-02"]
    assert (bids.source["dataset"], bids.source["licence"], bids.cases) == ("toy", "CC0", 3)

    folder = tmp_path / "volumes"
    folder.mkdir()
    for image in find_images(bids_root, "FLAIR"):
        (folder / image.path.name).write_bytes(image.path.read_bytes())
    assert training_main(["prepare", "--volumes", str(folder), "--out", str(tmp_path / "f.npz"), *tiny]) == 0
    listed = SliceSet.load(tmp_path / "f.npz")
    assert sorted(set(listed.case_ids)) == ["sub-01_ses-1_FLAIR", "sub-01_ses-2_FLAIR", "sub-02_FLAIR"]
    assert np.array_equal(np.sort(listed.slices.reshape(len(listed.slices), -1), axis=0),
                          np.sort(bids.slices.reshape(len(bids.slices), -1), axis=0))  # the same preprocessing

    array = head_array(seed=5)
    _write(tmp_path / "csv" / "a.nii.gz", array)
    _write(tmp_path / "csv" / "a_brain.nii.gz", (array > 0).astype(np.uint8))
    (tmp_path / "csv" / "list.csv").write_text("input,brain_mask\na.nii.gz,a_brain.nii.gz\n")
    assert training_main(["prepare", "--volumes", str(tmp_path / "csv" / "list.csv"), "--licence", "mine",
                          "--out", str(tmp_path / "c.npz"), *tiny]) == 0
    assert SliceSet.load(tmp_path / "c.npz").source["licence"] == "mine"


def test_prepare_refuses_volumes_named_as_another_contrast(bids_root, tmp_path, capsys):
    tiny = ["--modality", "flair", "--size", "32", "--spacing", "4"]
    assert training_main(["prepare", "--bids", str(bids_root), "--suffix", "T1w", "--out", str(tmp_path / "b.npz"),
                          *tiny]) == 1
    assert "3 of 3 volumes are named as another contrast than FLAIR (--modality): sub-01_ses-1_T1w.nii.gz" in \
        capsys.readouterr().err
    folder = tmp_path / "volumes"
    folder.mkdir()
    for image in (*find_images(bids_root, "FLAIR")[:1], *find_images(bids_root, "T1w")[:1]):
        (folder / image.path.name).write_bytes(image.path.read_bytes())
    assert training_main(["prepare", "--volumes", str(folder), "--out", str(tmp_path / "f.npz"), *tiny]) == 1
    assert "1 of 2 volumes are named as another contrast than FLAIR" in capsys.readouterr().err
    assert not (tmp_path / "b.npz").exists() and not (tmp_path / "f.npz").exists()
