"""The README's results table, made from the metrics stored in the bundled model cards by ``evaluate``."""

from __future__ import annotations

from MedicalAnomalyDetectionLib.bundle import list_bundled_models

COLUMNS = (("slice_auroc", "slice AUROC"),
           ("position_only_slice_auroc", "position only slice AUROC (area / centrality)"),
           ("slice_ap", "slice AP"), ("voxel_auroc", "voxel AUROC"), ("voxel_ap", "voxel AP"),
           ("best_dice", "⌈Dice⌉"),
           ("dice_at_threshold", "Dice @ threshold: pooled (per case mean ± SD; worst)"),
           ("healthy_fpr_at_threshold", "healthy voxels flagged @ threshold"),
           ("label_map_dice", "label map Dice: pooled (per case mean ± SD; worst)"),
           ("label_map_healthy_fpr", "healthy voxels flagged by the label map"))


def cell(metrics: dict, name: str) -> str:
    """One column's text: a number to 3 decimals; the position-only reference as "area / centrality"; a Dice with its
    per-case spread (``<name>_per_case``), the label map's Dice with its operating point; "–" for what was not
    measured."""
    value = metrics.get(name)
    if value is None:
        return "–"
    if name == "position_only_slice_auroc":
        return " / ".join("–" if value.get(k) is None else f"{value[k]:.3f}" for k in ("brain_area", "centrality"))
    text = f"{value:.3f}"
    spread = metrics.get(f"{name}_per_case")
    if spread:
        text += f" ({spread['mean']:.3f} ± {spread['sd']:.3f}; {spread['worst']:.3f} {spread['worst_case']})"
    if name == "label_map_dice" and metrics.get("label_map_operating_point"):
        text += f" [{metrics['label_map_operating_point']}]"
    return text


def markdown_table() -> str:
    """One row per (model, dataset/split[, variant]) measured in a bundled card; beside the slice AUROC, the "position
    only" reference (the slice AUROC of the same slices' brain area and centrality, see ``evaluation.summarise``)."""
    rows = [f"| model | data | {' | '.join(title for _, title in COLUMNS)} |",
            "|---|---|" + "---|" * len(COLUMNS)]
    for card in list_bundled_models():
        for key, metrics in sorted(card.metrics.items()):
            if "cases" not in metrics:  # a metric across splits (SCRPS's volume AUROC) is not a split's row
                continue
            cells = [cell(metrics, name) for name, _ in COLUMNS]
            rows.append(f"| {card.name} | {key} ({metrics['cases']} cases) | {' | '.join(cells)} |")
    return "\n".join(rows)
