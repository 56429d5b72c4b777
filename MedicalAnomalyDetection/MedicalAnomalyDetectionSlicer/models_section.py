"""The panel's Models section: the catalogue and the user's models in a table (name, version, modality, size,
licence, where the weights are), with Install (a bundle's card.json or a catalogued model's weights) and Remove (only
models of the user's folder). A part of :class:`~.widget.MedicalAnomalyDetectionPanel`, which owns ``ui``, ``tasks``
and ``_modelsChanged``."""

from __future__ import annotations

import qt
import slicer

from MedicalAnomalyDetectionLib.bundle import CARD_FILE, user_models_dir
from MedicalAnomalyDetectionLib.errors import InputError
from MedicalAnomalyDetectionLib.installation import install_model, model_rows, remove_model


class ModelsSection:
    """The Models section's table and buttons (mixed into the panel)."""

    def _fillModelsTable(self) -> None:
        """The catalogue and the user's models: name, version, modality, size, licence, where the weights are."""
        table = self.ui.modelsTable
        try:
            rows = model_rows()
        except InputError as error:
            rows = []
            self.ui.modelsStatusLabel.text = str(error)
        self._modelRows = rows
        table.clearContents()
        table.setRowCount(len(rows))
        for row, model in enumerate(rows):
            size = f"{model['size'] / 1e6:.3g} MB" if model["size"] else "-"
            texts = (model["name"], model["version"], model["modality"].upper(), size, model["licence"],
                     model["where"])
            for column, text in enumerate(texts):
                item = qt.QTableWidgetItem(text)
                item.setToolTip(text)
                table.setItem(row, column, item)
        self._updateModelButtons()

    def _selectedModelRow(self) -> dict | None:
        items = self.ui.modelsTable.selectedItems()
        row = items[0].row() if items else -1
        return self._modelRows[row] if 0 <= row < len(self._modelRows) else None

    def _selectedModelName(self) -> str | None:
        row = self._selectedModelRow()
        return row["name"] if row is not None else None

    @staticmethod
    def _removable(name: str) -> bool:
        """Only models in the user's folder (fitted, installed or downloaded) can be removed, not the bundled ones."""
        return (user_models_dir() / name / CARD_FILE).exists()

    def _updateModelButtons(self) -> None:
        """Remove only for a selected model of the user's folder; neither button while a task runs."""
        selected = self._selectedModelRow()
        busy = self.tasks.busy
        removable = selected is not None and self._removable(selected["name"])
        self.ui.removeModelButton.enabled = removable and not busy
        self.ui.installModelButton.enabled = not busy
        if busy:
            tip = "Wait until the running task has finished"
        elif removable:
            tip = f"Delete {selected['name']} from {user_models_dir()}"
        elif selected is not None and selected["where"].startswith("not downloaded"):
            tip = f"{selected['name']} is not downloaded; nothing to remove"
        elif selected is not None:
            tip = f"{selected['name']} ships with the extension and cannot be removed"
        else:
            tip = "Select a model in your model folder to delete it"
        self.ui.removeModelButton.toolTip = tip

    def _removeModel(self) -> None:
        name = self._selectedModelName()
        if name is None or not self._removable(name) or self.tasks.busy:
            return
        if not slicer.util.confirmOkCancelDisplay(f"Delete model {name} from {user_models_dir()}?",
                                                  windowTitle="Remove model"):
            return
        try:
            folder = remove_model(name)
        except InputError as error:
            slicer.util.errorDisplay(str(error))
            return
        self._modelsChanged()
        self.ui.modelsStatusLabel.text = f"Removed {name} ({folder})."

    def _installModel(self) -> None:
        path = qt.QFileDialog.getOpenFileName(
            self.widget, "Install a model: a bundle's card.json (weights.pt beside it) or a catalogued model's weights",
            "", "Model bundle or weights (card.json *.pt);;All files (*)")
        if not path:
            return
        try:
            folder = install_model(path)
        except InputError as error:
            slicer.util.errorDisplay(f"Cannot install {path}: {error}")
            return
        self._modelsChanged(folder.name)
        self.ui.modelsStatusLabel.text = f"Installed {folder.name} in {folder}; it is selected for Detect."
