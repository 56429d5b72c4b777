"""How long finding a cohort's images in a large BIDS dataset takes: our small reader (``bids.find_images``) and, where
it is installed, pybids (``BIDSLayout`` + ``get``), on the same generated tree.

    python docs/benchmarks/bids_reader.py --subjects 2000 --sessions 2 > docs/benchmarks/bids_reader.json

The tree has, per subject and session, FLAIR, T1w and T2w images with JSON sidecars in ``anat/`` and a BOLD run with
its events in ``func/`` (empty files, ``{}`` sidecars: only names are read). Prints one JSON object; seconds are the
best of 3 (pybids: building the layout, with its defaults, and the query).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository: `training` runs from a clone, uninstalled
sys.path.insert(0, str(ROOT))

from MedicalAnomalyDetectionLib.bids import find_images
from training.bench import machine


def make_tree(root: Path, subjects: int, sessions: int) -> int:
    """Write the tree; returns how many files it holds."""
    (root / "dataset_description.json").write_text(json.dumps({"Name": "generated", "BIDSVersion": "1.10.0"}))
    files = 1
    for s in range(1, subjects + 1):
        for t in range(1, sessions + 1):
            base = root / f"sub-{s:05d}" / f"ses-{t}"
            entities = f"sub-{s:05d}_ses-{t}"
            for folder, names in (("anat", [f"{entities}_{x}.{e}" for x in ("FLAIR", "T1w", "T2w")
                                            for e in ("nii.gz", "json")]),
                                  ("func", [f"{entities}_task-rest_bold.nii.gz", f"{entities}_task-rest_events.tsv"])):
                (base / folder).mkdir(parents=True, exist_ok=True)
                for name in names:
                    (base / folder / name).write_text("{}" if name.endswith(".json") else "")
                files += len(names)
    return files


def best_of(function, repeats: int = 3) -> tuple[float, int]:
    """(best seconds, how many images the call found)."""
    best, found = float("inf"), 0
    for _ in range(repeats):
        started = time.perf_counter()
        found = len(function())
        best = min(best, time.perf_counter() - started)
    return best, found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        result = {"subjects": args.subjects, "sessions": args.sessions, "files": make_tree(root, args.subjects,
                                                                                             args.sessions),
                  "command": "python docs/benchmarks/bids_reader.py " + " ".join(sys.argv[1:])}
        seconds, found = best_of(lambda: find_images(root, "FLAIR"))
        result["small_reader"] = {"seconds": round(seconds, 3), "images": found}
        try:
            import bids
        except ImportError:
            result["pybids"] = "not installed"
        else:
            def with_pybids() -> list:
                layout = bids.BIDSLayout(str(root), validate=False)
                return layout.get(suffix="FLAIR", extension=[".nii.gz", ".nii"], datatype="anat")
            seconds, found = best_of(with_pybids)
            result["pybids"] = {"version": bids.__version__, "seconds": round(seconds, 3), "images": found}
        result["machine"] = machine()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
