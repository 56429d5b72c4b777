"""The bundled sample case in Slicer's Sample Data module (needs a running Slicer; call after startup).

MSLUB patient 19 (Lesjak et al., Neuroinformatics 2017, CC BY): FLAIR and brain mask, served from the extension's
own ``Resources/Sample`` folder and checked against the SHA256 sums below before loading.
"""

from __future__ import annotations

from . import resourcePath

SAMPLE_FOLDER = ("Sample", "mslub-patient19")
# file name -> (node name, checksum); a test checks these against the committed files
SAMPLE_FILES = {
    "flair.nii.gz": ("MSLUB19 FLAIR",
                     "SHA256:8c869517febe9b62fff04ca6fccf9b11b5d02efb3017dacb00f1a9bcbd15121e"),
    "brain.nii.gz": ("MSLUB19 brain mask",
                     "SHA256:99201f36f58f67f4cd3d7da9c63b17c21a16f3110c287aeb24bf80d418f59f0a"),
}


def registerSampleData() -> None:
    """Add "MSLUB patient 19 FLAIR" under a "Medical Anomaly Detection" category of Sample Data."""
    import SampleData

    folder = resourcePath(*SAMPLE_FOLDER)
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="Medical Anomaly Detection",
        sampleName="MSLUB patient 19 FLAIR",
        uris=[(folder / name).as_uri() for name in SAMPLE_FILES],
        fileNames=[f"MedicalAnomalyDetection-mslub19-{name}" for name in SAMPLE_FILES],
        nodeNames=[node for node, _ in SAMPLE_FILES.values()],
        checksums=[checksum for _, checksum in SAMPLE_FILES.values()],
        thumbnailFileName=str(resourcePath("Icons", "MedicalAnomalyDetection.png")),
        loadFileType=["VolumeFile", "VolumeFile"],
    )
