"""The README's results table, made from the metrics stored in the bundled model cards by ``evaluate``."""

from __future__ import annotations

from MedicalAnomalyDetectionLib.bundle import list_bundled_models

COLUMNS = (("slice_auroc", "slice AUROC"), ("slice_ap", "slice AP"), ("voxel_auroc", "voxel AUROC"),
           ("voxel_ap", "voxel AP"), ("best_dice", "⌈Dice⌉"), ("dice_at_threshold", "Dice @ threshold"),
           ("healthy_fpr_at_threshold", "healthy voxels flagged @ threshold"))


def markdown_table() -> str:
    """One row per (model, dataset/split[, variant]) measured in a bundled card."""
    rows = [f"| model | data | {' | '.join(title for _, title in COLUMNS)} |",
            "|---|---|" + "---|" * len(COLUMNS)]
    for card in list_bundled_models():
        for key, metrics in sorted(card.metrics.items()):
            if "cases" not in metrics:  # a metric across splits (SCRPS's volume AUROC) is not a split's row
                continue
            cells = ["–" if metrics.get(name) is None else f"{metrics[name]:.3f}" for name, _ in COLUMNS]
            rows.append(f"| {card.name} | {key} ({metrics['cases']} cases) | {' | '.join(cells)} |")
    return "\n".join(rows)
