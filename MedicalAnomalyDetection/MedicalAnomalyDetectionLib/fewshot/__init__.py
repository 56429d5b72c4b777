"""Few-shot fitting of PathoSCOPE from a handful of healthy reference slices (used by ``training`` and by Slicer)."""
