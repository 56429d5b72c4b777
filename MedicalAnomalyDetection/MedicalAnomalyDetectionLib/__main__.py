"""``python -m MedicalAnomalyDetectionLib`` is ``mad-detect``."""

import sys

from .cli import main

sys.exit(main())
