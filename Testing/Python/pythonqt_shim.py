"""A thin PythonQt-style layer over PySide6 and the ``slicer-core`` wheel, so that the module's real panel
(``MedicalAnomalyDetectionSlicer/widget.py``) and module file (``MedicalAnomalyDetection.py``) run in tests.

Use it through :func:`slicerApp` (a context manager; tests wrap it in a fixture). Inside it, and only there:

- ``import qt`` gives PySide6 classes that behave as under PythonQt: ``obj.connect("signal(args)", slot)`` (the
  signature is checked against the object's real signals; extra signal arguments are dropped for slots that take
  fewer, as PythonQt does), Qt properties read and written as attributes, shadowing the getters (``label.text = "x"``,
  ``combo.count``, ``button.toolTip``), ``obj.name`` (the object name) and ``obj.className()``. Any QObject class of
  QtCore/QtGui/QtWidgets is wrapped so on first use (``qt.QTimer``, ``qt.QPushButton``, ...); others (``qt.QIcon``,
  ``qt.Qt``) are PySide6's own. ``qt.QUiLoader`` builds the ctk/qMRML widgets below and wrapped Qt widgets (layouts
  stay plain PySide6 objects), and makes the .ui's own signal/slot connections (a ``vtkMRMLScene*`` argument travels
  as ``PyObject``); any Qt warning while loading is an error. ``qt.QFileDialog``/``qt.QMessageBox`` static dialogs
  answer from :attr:`SlicerApp.dialogAnswers` (or fail the test): a modal dialog offscreen would block forever.
- ``import ctk``: ``ctkCollapsibleButton`` (``collapsed``, ``contentsCollapsed(bool)``, children hidden when
  collapsed), ``ctkSliderWidget`` (``value``/``minimum``/``maximum``/``singleStep``/``decimals``,
  ``valueChanged(double)``; a QDoubleSpinBox inside, so values are clamped and rounded to ``decimals`` as ctk does),
  ``ctkPathLineEdit`` (``currentPath``, ``currentPathChanged(QString)``).
- ``slicer.qMRMLWidget`` (``setMRMLScene``, ``mrmlSceneChanged(vtkMRMLScene*)``), ``slicer.qMRMLNodeComboBox``
  (``nodeTypes``, ``noneEnabled``, ``setMRMLScene``/``currentNode``/``setCurrentNode``/``currentNodeID``,
  ``currentNodeChanged(vtkMRMLNode*)``; follows the scene's added/removed nodes, lists nodes that are ``IsA`` one of
  the types and not hidden from editors; like the real one it does not pick a node by itself when the scene is set or
  a node is added, and when the current node is removed it takes the next listed node), and
  ``slicer.qMRMLCheckableNodeComboBox`` (``setCheckState``/``checkState``/``checkedNodes``).
- ``slicer.mrmlScene`` is the test's scene; ``slicer.app`` offers ``processEvents``/``connect``; ``slicer.modules``
  has ``markups.logic().JumpSlicesToLocation`` and ``plots.logic().ShowChartInLayout`` (recorded, arguments checked
  against the C++ signatures) and the module widgets built through :meth:`SlicerApp.addModuleWidget`;
  ``slicer.util.errorDisplay``/``warningDisplay``/``infoDisplay``/``delayDisplay`` are recorded,
  ``confirmOkCancelDisplay``/``confirmYesNoDisplay`` answer from ``dialogAnswers``, ``pip_install`` refuses,
  ``loadVolume``/``loadLabelVolume`` read files with MRML's own ``vtkMRMLVolumeArchetypeStorageNode``,
  ``getModuleWidget``/``selectModule`` find (and enter) the module widgets.
- ``slicer.parameterNodeWrapper``: slicer-core does not ship Slicer's (it is part of Slicer's application Python), so
  this is a minimal re-implementation of what ``parameters.py`` uses, written after Slicer's behaviour: fields typed
  ``str``/``int``/``float``/``bool``/MRML node (or a Union of node classes) with defaults, ``Choice`` and
  ``WithinRange`` validators, values stored as the real serializers store them (parameters; node references; but a
  Union of node classes under its own name, where Slicer's UnionSerializer uses ``name_0``, ``name_1``...), and
  ``connectGui``/``disconnectGui`` finding widgets by their ``SlicerParameterName`` property with the connectors of
  Slicer's ``guiConnectors.py`` for the widget classes the .ui uses: a QComboBox needs a ``Choice`` and is refilled
  with it; a ctkSliderWidget needs bounds and gets the ``WithinRange`` as its range (overriding the .ui's); a
  qMRMLNodeComboBox gets ``nodeTypes`` from the annotation by instantiating the node class (so an abstract class such
  as ``vtkMRMLNode`` fails with the same TypeError as in Slicer); widgets are written from the node first, then
  connected; node changes update the widgets, widget changes update the node, without echo.
- ``slicer.ScriptedLoadableModule``: ``ScriptedLoadableModule``, ``ScriptedLoadableModuleWidget`` (a parent widget
  with a ``QVBoxLayout`` as ``self.layout``), ``ScriptedLoadableModuleLogic``, ``ScriptedLoadableModuleTest``
  (``unittest.TestCase`` with ``delayDisplay``).

Real, not stand-ins: the MRML scene, nodes and events (``slicer-core``), ``slicer.util.loadUI``,
``childWidgetVariables``, ``VTKObservationMixin``, ``NodeModify`` (``slicer-core``'s own code, run against the layer's
``qt``), Qt's .ui loader, widgets, signals, timers and event loop (PySide6, offscreen). Exceptions raised in slots and
VTK observers, which Qt and VTK only print, are collected in :attr:`SlicerApp.exceptions` (tests assert none).

What it cannot prove:

- PythonQt itself: its argument conversions, overload choice, ownership and lifetime rules, how it names enums;
  anything PythonQt does differently from these emulations is untested (e.g. ``isinstance(label, qt.QWidget)`` is
  False here, True under PythonQt); and Qt 5 (Slicer 5) versus the Qt 6 of PySide6;
- the real ctk and qMRML widgets: their drawing, popups, "Create new"/"Rename" actions, sorting, filtering by
  attributes, subject hierarchy display, and their exact behaviour when nodes come and go during a scene close;
- Slicer's real ``parameterNodeWrapper`` (its caching, packs, other serializers and connectors, and whatever it does
  beyond the behaviour re-implemented here);
- the application: the module's registration and menus, its widget built by Slicer, ``enter``/``exit`` called by the
  module panel, the layout, slice views drawn in the application, real dialogs, Slicer's event loop and its
  responsiveness while a worker thread runs, the PyTorch extension, Sample Data.
"""

from __future__ import annotations

import contextlib
import re
import sys
import time
import types
import typing
import unittest
from pathlib import Path
from typing import Any, Callable

import shiboken6
import slicer
import slicer.util
import vtk
from PySide6 import QtCore, QtGui, QtUiTools, QtWidgets

# --------------------------------------------------------------------------------------------------------------------
# PythonQt-style objects

_PYSIDE_MODULES = ("PySide6", "Shiboken", "shiboken6", "builtins")
_NAMES: dict[type, tuple[frozenset[str], frozenset[str]]] = {}


def _names(cls: type) -> tuple[frozenset[str], frozenset[str]]:
    """(Qt properties of ``cls``, other names the layer defines in Python). Qt properties are the C++ ones and the
    layer's own ``QtCore.Property``s, read and written through the meta-object as PythonQt does; a C++ property that
    the layer redefines as a plain Python attribute is not one. The layer's Python methods are looked up first
    (PySide6 would otherwise answer some names, such as ``connect``, with its own method)."""
    names = _NAMES.get(cls)
    if names is None:
        qtBase = next(c for c in cls.__mro__ if c.__module__.startswith("PySide6."))
        meta = qtBase.staticMetaObject
        python = {name: value for c in reversed(cls.__mro__) if not c.__module__.startswith(_PYSIDE_MODULES)
                  for name, value in vars(c).items() if not name.startswith("__")}
        pythonProperties = {name for name, value in python.items() if isinstance(value, QtCore.Property)}
        plain = frozenset(python) - pythonProperties
        cxx = {meta.property(i).name() for i in range(meta.propertyCount())}
        names = frozenset((cxx | pythonProperties) - plain), plain
        _NAMES[cls] = names
    return names


def _signature(signal: str) -> str:
    """Normalised Qt signature; pointers to VTK/MRML objects cross PySide6 signals as ``PyObject``."""
    signal = re.sub(r"\bvtk\w*\s*\*", "PyObject", signal)
    return bytes(QtCore.QMetaObject.normalizedSignature(signal).data()).decode()


class PythonQtObject:
    """Mixin giving a PySide6 QObject subclass PythonQt's Python face (see the module docstring)."""

    def __getattribute__(self, name: str):
        qtProperties, python = _names(type(self))
        if name in python:
            return object.__getattribute__(self, name)
        if name in qtProperties:
            meta = QtCore.QObject.metaObject(self)
            return meta.property(meta.indexOfProperty(name)).read(self)
        return super().__getattribute__(name)

    def __setattr__(self, name: str, value) -> None:
        if name[:1] != "_" and name in _names(type(self))[0]:
            meta = QtCore.QObject.metaObject(self)
            prop = meta.property(meta.indexOfProperty(name))
            if not prop.isWritable() or not prop.write(self, value):
                raise AttributeError(f"cannot set {type(self).__name__}.{name} to {value!r}")
            return
        super().__setattr__(name, value)

    @property
    def name(self) -> str:  # PythonQt exposes objectName as ``name`` (slicer.util.childWidgetVariables uses it)
        return QtCore.QObject.objectName(self)

    def className(self) -> str:
        return QtCore.QObject.metaObject(self).className()

    def connect(self, signal: str, slot: Callable) -> bool:
        """PythonQt's ``obj.connect("clicked(bool)", callable)``; the signal must exist with that signature."""
        signature = _signature(signal)
        if QtCore.QObject.metaObject(self).indexOfSignal(signature) < 0:
            raise AttributeError(f"{self.className()} has no signal {signal}")
        self.__dict__.setdefault("_pythonQtSlots", []).append(slot)  # PythonQt keeps the callable alive too
        return bool(QtCore.QObject.connect(self, QtCore.SIGNAL(signature), slot))

    def disconnect(self, signal: str, slot: Callable) -> bool:
        return bool(QtCore.QObject.disconnect(self, QtCore.SIGNAL(_signature(signal)), slot))


# Every class handed to Qt stays referenced here for the whole process: PySide6 dereferences a collected type
# (a segmentation fault) when a class it instantiated or registered is garbage collected.
_WRAPPED: dict[str, Any] = {}


def wrapped(name: str):
    """``qt.<name>``: a QObject class of QtWidgets/QtCore/QtGui with :class:`PythonQtObject` mixed in, others as is."""
    if name in _WRAPPED:
        return _WRAPPED[name]
    if name.startswith("_"):
        raise AttributeError(f"module 'qt' has no attribute {name!r}")
    for module in (QtWidgets, QtCore, QtGui):
        base = getattr(module, name, None)
        if base is not None:
            break
    else:
        raise AttributeError(f"module 'qt' has no attribute {name!r}")
    if isinstance(base, type) and issubclass(base, QtCore.QObject):
        base = type(name, (PythonQtObject, base), {"__module__": "qt"})
    _WRAPPED[name] = base
    return base


# --------------------------------------------------------------------------------------------------------------------
# ctk and qMRML widgets (as far as the panel uses them)

class qMRMLWidget(PythonQtObject, QtWidgets.QWidget):
    """A QWidget that passes its scene on through ``mrmlSceneChanged(vtkMRMLScene*)`` (wired in the .ui)."""

    mrmlSceneChanged = QtCore.Signal(object)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._scene = None

    @QtCore.Slot(object)
    def setMRMLScene(self, scene) -> None:
        if scene is not self._scene:
            self._scene = scene
            self.mrmlSceneChanged.emit(scene)

    def mrmlScene(self):
        return self._scene


class qMRMLNodeComboBox(PythonQtObject, QtWidgets.QWidget):
    """The scene's nodes of ``nodeTypes`` (subclasses included, hidden ones not), in scene order, after "None" when
    ``noneEnabled``; shown in a QComboBox."""

    currentNodeChanged = QtCore.Signal(object)  # currentNodeChanged(vtkMRMLNode*)
    currentNodeIDChanged = QtCore.Signal(str)
    nodeAdded = QtCore.Signal(object)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._combo = QtWidgets.QComboBox(self)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self._combo)
        self._nodeTypes: list[str] = []
        self._flags = {"noneEnabled": False, "addEnabled": True, "removeEnabled": True, "renameEnabled": False,
                       "showHidden": False, "selectNodeUponCreation": True}
        self._scene = None
        self._tags: list[int] = []
        self._current = None
        self._listedIDs: list[str] = []  # what the combo box lists, by node ID
        self.setEnabled(False)

    # properties set by the .ui and by code
    def _getNodeTypes(self) -> list[str]:
        return list(self._nodeTypes)

    def _setNodeTypes(self, value) -> None:
        self._nodeTypes = [str(t) for t in value if t]
        self._refresh()

    nodeTypes = QtCore.Property("QStringList", _getNodeTypes, _setNodeTypes)

    def _flag(name: str):  # noqa: N805 - builds a Property
        def getter(self) -> bool:
            return self._flags[name]

        def setter(self, value: bool) -> None:
            self._flags[name] = bool(value)
            self._refresh()
        return QtCore.Property(bool, getter, setter)

    noneEnabled = _flag("noneEnabled")
    addEnabled = _flag("addEnabled")
    removeEnabled = _flag("removeEnabled")
    renameEnabled = _flag("renameEnabled")
    showHidden = _flag("showHidden")
    selectNodeUponCreation = _flag("selectNodeUponCreation")
    del _flag

    def _getCurrentNodeID(self) -> str:
        return self._current.GetID() if self._current is not None else ""

    currentNodeID = QtCore.Property(str, _getCurrentNodeID, lambda self, nodeID: self.setCurrentNodeID(nodeID))

    # scene
    @QtCore.Slot(object)
    def setMRMLScene(self, scene) -> None:
        if scene is self._scene:
            return
        if self._scene is not None:
            for tag in self._tags:
                self._scene.RemoveObserver(tag)
        self._scene, self._tags = scene, []
        if scene is not None:
            self._tags = [scene.AddObserver(scene.NodeAddedEvent, self._onNodeAdded),
                          scene.AddObserver(scene.NodeRemovedEvent, self._onNodeRemoved)]
        self._setCurrent(self._current if self._current in self.nodes() else None)
        self._refresh()
        self.setEnabled(scene is not None)

    def mrmlScene(self):
        return self._scene

    def nodes(self) -> list:
        scene = self._scene
        if scene is None:
            return []
        found = []
        for index in range(scene.GetNumberOfNodes()):
            node = scene.GetNthNode(index)
            if any(node.IsA(t) for t in self._nodeTypes) and (self._flags["showHidden"]
                                                                or not node.GetHideFromEditors()):
                found.append(node)
        return found

    def nodeCount(self) -> int:
        return len(self.nodes())

    def nodeFromIndex(self, index: int):
        nodes = self.nodes()
        return nodes[index] if 0 <= index < len(nodes) else None

    # current node
    def currentNode(self):
        return self._current

    @QtCore.Slot(object)
    def setCurrentNode(self, node) -> None:
        self._setCurrent(node if node is not None and node in self.nodes() else None)

    @QtCore.Slot(str)
    def setCurrentNodeID(self, nodeID: str) -> None:
        self.setCurrentNode(self._scene.GetNodeByID(nodeID) if self._scene is not None and nodeID else None)

    def _setCurrent(self, node) -> None:
        if node is self._current:
            return
        self._current = node
        self._refresh()
        self.currentNodeChanged.emit(node)
        self.currentNodeIDChanged.emit(node.GetID() if node is not None else "")

    def _refresh(self) -> None:
        """What the combo box shows."""
        if not shiboken6.isValid(self._combo):
            return
        nodes = self.nodes()
        self._listedIDs = [node.GetID() for node in nodes]
        offset = 1 if self._flags["noneEnabled"] else 0
        blocked = self._combo.blockSignals(True)
        self._combo.clear()
        self._combo.addItems(["None"] * offset + [node.GetName() for node in nodes])
        if self._current in nodes:
            self._combo.setCurrentIndex(nodes.index(self._current) + offset)
        else:
            self._combo.setCurrentIndex(0 if offset else -1)
        self._combo.blockSignals(blocked)

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def _onNodeAdded(self, scene, event, node) -> None:
        if not shiboken6.isValid(self):
            return
        if node in self.nodes():
            self._refresh()
            self.nodeAdded.emit(node)

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def _onNodeRemoved(self, scene, event, node) -> None:
        if not shiboken6.isValid(self):
            return
        if node is self._current:
            # the real combo box moves to the row that takes the removed one's place (the next node, else the last)
            remaining = self.nodes()
            listed = self._listedIDs
            position = listed.index(node.GetID()) if node.GetID() in listed else 0
            nextNode = remaining[min(position, len(remaining) - 1)] if remaining and not scene.IsClosing() else None
            self._setCurrent(nextNode)
        self._refresh()


class qMRMLCheckableNodeComboBox(qMRMLNodeComboBox):
    """A node combo box whose nodes can be ticked; ``checkedNodes()`` in scene order."""

    checkedNodesChanged = QtCore.Signal()

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._checked: set[str] = set()

    def setCheckState(self, node, state) -> None:
        if node is None or node not in self.nodes():
            return
        before = set(self._checked)
        if QtCore.Qt.CheckState(state) == QtCore.Qt.CheckState.Checked:
            self._checked.add(node.GetID())
        else:
            self._checked.discard(node.GetID())
        if self._checked != before:
            self.checkedNodesChanged.emit()

    def checkState(self, node):
        checked = node is not None and node.GetID() in self._checked
        return QtCore.Qt.CheckState.Checked if checked else QtCore.Qt.CheckState.Unchecked

    def checkedNodes(self) -> list:
        return [node for node in self.nodes() if node.GetID() in self._checked]

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def _onNodeRemoved(self, scene, event, node) -> None:
        if shiboken6.isValid(self) and node.GetID() in self._checked:
            self._checked.discard(node.GetID())
            self.checkedNodesChanged.emit()
        qMRMLNodeComboBox._onNodeRemoved(self, scene, event, node)


class ctkCollapsibleButton(PythonQtObject, QtWidgets.QWidget):
    """A titled box whose contents hide when ``collapsed``; ``click()`` toggles it, as on the real button."""

    contentsCollapsed = QtCore.Signal(bool)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._text = ""
        self._collapsed = False

    def _getText(self) -> str:
        return self._text

    def _setText(self, text: str) -> None:
        self._text = str(text)

    text = QtCore.Property(str, _getText, _setText)

    def _getCollapsed(self) -> bool:
        return self._collapsed

    def _setCollapsed(self, collapsed: bool) -> None:
        collapsed = bool(collapsed)
        if collapsed == self._collapsed:
            return
        self._collapsed = collapsed
        for child in self.findChildren(QtWidgets.QWidget, options=QtCore.Qt.FindChildOption.FindDirectChildrenOnly):
            child.setVisible(not collapsed)
        self.contentsCollapsed.emit(collapsed)

    collapsed = QtCore.Property(bool, _getCollapsed, _setCollapsed)

    def click(self) -> None:
        self._setCollapsed(not self._collapsed)


class ctkSliderWidget(PythonQtObject, QtWidgets.QWidget):
    """A slider with a spin box; value clamped to [minimum, maximum] and rounded to ``decimals`` (a QDoubleSpinBox
    does both, as the ctk widget does), ``valueChanged(double)`` on every change, including clamping."""

    valueChanged = QtCore.Signal(float)
    valueIsChanging = QtCore.Signal(float)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._spinBox = QtWidgets.QDoubleSpinBox(self)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self._spinBox)
        self._spinBox.valueChanged.connect(self.valueChanged.emit)

    def _spin(attribute: str, kind):  # noqa: N805 - builds a Property over the spin box
        def getter(self):
            return getattr(QtWidgets.QDoubleSpinBox, attribute)(self._spinBox)

        def setter(self, value) -> None:
            getattr(QtWidgets.QDoubleSpinBox, "set" + attribute[0].upper() + attribute[1:])(self._spinBox, value)
        return QtCore.Property(kind, getter, setter)

    value = _spin("value", float)
    minimum = _spin("minimum", float)
    maximum = _spin("maximum", float)
    singleStep = _spin("singleStep", float)
    decimals = _spin("decimals", int)
    del _spin

    @QtCore.Slot(float)
    def setValue(self, value: float) -> None:
        self._spinBox.setValue(value)

    def setRange(self, minimum: float, maximum: float) -> None:
        self._spinBox.setRange(minimum, maximum)

    def setMinimum(self, minimum: float) -> None:
        self._spinBox.setMinimum(minimum)

    def setMaximum(self, maximum: float) -> None:
        self._spinBox.setMaximum(maximum)

    def setSingleStep(self, step: float) -> None:
        self._spinBox.setSingleStep(step)

    def setDecimals(self, decimals: int) -> None:
        self._spinBox.setDecimals(decimals)


class ctkPathLineEdit(PythonQtObject, QtWidgets.QWidget):
    """A path field (the browse button is not emulated); ``currentPath`` and ``currentPathChanged(QString)``."""

    currentPathChanged = QtCore.Signal(str)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._lineEdit = QtWidgets.QLineEdit(self)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self._lineEdit)
        self._lineEdit.textChanged.connect(self.currentPathChanged.emit)

    def _getPath(self) -> str:
        return self._lineEdit.text()

    def _setPath(self, path: str) -> None:
        self._lineEdit.setText(str(path))

    currentPath = QtCore.Property(str, _getPath, _setPath)

    def setCurrentPath(self, path: str) -> None:
        self._setPath(path)


CUSTOM_WIDGETS = {cls.__name__: cls for cls in (qMRMLWidget, qMRMLNodeComboBox, qMRMLCheckableNodeComboBox,
                                                  ctkCollapsibleButton, ctkSliderWidget, ctkPathLineEdit)}


class QtMessages:
    """Collects Qt's warnings while installed (``with QtMessages() as messages``)."""

    IGNORED = ("propagateSizeHints",)  # the offscreen platform's note, not about the code under test

    def __init__(self) -> None:
        self.messages: list[str] = []

    def _handle(self, kind, context, message) -> None:
        if kind != QtCore.QtMsgType.QtDebugMsg and not any(text in message for text in self.IGNORED):
            self.messages.append(message)

    def __enter__(self) -> "QtMessages":
        self._previous = QtCore.qInstallMessageHandler(self._handle)
        return self

    def __exit__(self, *exc) -> None:
        QtCore.qInstallMessageHandler(self._previous)


class QUiLoader(PythonQtObject, QtUiTools.QUiLoader):
    """Slicer's .ui loader: knows the ctk/qMRML widgets; every widget it builds has PythonQt's face."""

    def createWidget(self, className: str, parent=None, name: str = ""):
        cls = CUSTOM_WIDGETS.get(className)
        if cls is None and isinstance(getattr(QtWidgets, className, None), type):
            cls = wrapped(className)
        if cls is None:
            return super().createWidget(className, parent, name)
        widget = cls(parent)
        widget.setObjectName(name)
        return widget

    def load(self, device, parentWidget=None):
        if isinstance(device, (str, Path)):
            data = Path(device).read_bytes()
        else:
            data = bytes(device.readAll().data())
        # The .ui names the C++ argument types of the qMRML signals and slots; here VTK objects travel as PyObject.
        text = re.sub(r"(<(signal|slot)>[^<(]*\()([^<)]*)(\))",
                      lambda m: m.group(1) + _signature(f"x({m.group(3)})")[2:-1] + m.group(4), data.decode())
        buffer = QtCore.QBuffer()
        buffer.setData(QtCore.QByteArray(text.encode()))
        buffer.open(QtCore.QIODevice.OpenModeFlag.ReadOnly)
        with QtMessages() as messages:
            widget = super().load(buffer, parentWidget)
        if widget is None or messages.messages:
            raise RuntimeError(f"loading the .ui failed: {self.errorString()} {messages.messages}")
        return widget


_CURRENT: list["SlicerApp"] = []  # the app of the running slicerApp() context (dialogs answer from it)


def _dialog(kind: str, *args):
    """A static dialog function: recorded, answered from ``dialogAnswers`` (a modal dialog offscreen never returns)."""
    if not _CURRENT:
        raise AssertionError(f"dialog {kind} outside slicerApp()")
    app = _CURRENT[-1]
    app.dialogs.append((kind, args))
    if not app.dialogAnswers:
        raise AssertionError(f"unexpected dialog {kind}{args}: queue an answer in dialogAnswers")
    return app.dialogAnswers.pop(0)


QFileDialog = type("QFileDialog", (wrapped("QFileDialog"),), {
    "__module__": "qt", **{kind: staticmethod(lambda *args, kind=kind: _dialog(kind, *args))
                           for kind in ("getExistingDirectory", "getOpenFileName", "getOpenFileNames",
                                        "getSaveFileName")}})
QMessageBox = type("QMessageBox", (wrapped("QMessageBox"),), {
    "__module__": "qt", **{kind: staticmethod(lambda *args, kind=kind: _dialog(kind, *args))
                           for kind in ("question", "information", "warning", "critical")}})


def _qtModule() -> types.ModuleType:
    module = types.ModuleType("qt", "PythonQt's qt module, emulated over PySide6 (tests only)")
    module.__dict__.update(Qt=QtCore.Qt, QUiLoader=QUiLoader, SIGNAL=QtCore.SIGNAL, SLOT=QtCore.SLOT,
                           QFileDialog=QFileDialog, QMessageBox=QMessageBox)
    module.__getattr__ = wrapped
    return module


def _ctkModule() -> types.ModuleType:
    module = types.ModuleType("ctk", "the ctk widgets the panel uses, emulated over PySide6 (tests only)")
    for cls in (ctkCollapsibleButton, ctkSliderWidget, ctkPathLineEdit):
        setattr(module, cls.__name__, cls)
    return module


# --------------------------------------------------------------------------------------------------------------------
# slicer.parameterNodeWrapper (minimal, after Slicer's behaviour)

class Choice:
    def __init__(self, choices) -> None:
        self.choices = list(choices)

    def validate(self, value) -> None:
        if value not in self.choices:
            raise ValueError(f"Value is {value}, but must be in one of the following: {self.choices}")


class WithinRange:
    def __init__(self, minimum, maximum) -> None:
        self.minimum, self.maximum = minimum, maximum

    def validate(self, value) -> None:
        if not self.minimum <= value <= self.maximum:
            raise ValueError(f"Value must be within range [{self.minimum}, {self.maximum}], is {value}")


def _nodeClasses(annotation) -> tuple[type, ...] | None:
    """The MRML node classes of a node or Union-of-nodes annotation, else None."""
    if isinstance(annotation, type) and issubclass(annotation, slicer.vtkMRMLNode):
        return (annotation,)
    if typing.get_origin(annotation) is typing.Union:
        classes = tuple(a for a in typing.get_args(annotation) if a is not type(None))
        if all(isinstance(a, type) and issubclass(a, slicer.vtkMRMLNode) for a in classes):
            return classes
    return None


class _Field:
    def __init__(self, name: str, hint, cls) -> None:
        self.name = name
        self.type = typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Annotated else hint
        self.validators = list(typing.get_args(hint)[1:]) if typing.get_origin(hint) is typing.Annotated else []
        self.nodeClasses = _nodeClasses(self.type)
        if self.nodeClasses is None and self.type not in (str, int, float, bool):
            raise TypeError(f"unsupported parameter type {self.type} for {name}")
        defaults = {str: "", int: 0, float: 0.0, bool: False}
        self.default = getattr(cls, name) if name in vars(cls) else defaults.get(self.type)

    def validate(self, value) -> None:
        if self.nodeClasses is not None:
            if value is not None and not isinstance(value, self.nodeClasses):
                raise TypeError(f"{self.name} must be one of {self.nodeClasses}, not {type(value)}")
        else:
            allowed = (int, float) if self.type is float else self.type
            if value is None or not isinstance(value, allowed):
                raise TypeError(f"{self.name} must be {self.type.__name__}, not {value!r}")
        for validator in self.validators:
            validator.validate(value)

    def write(self, node, value) -> None:
        self.validate(value)
        if self.nodeClasses is not None:
            node.SetParameter(self.name, "")
            node.SetNodeReferenceID(self.name, value.GetID() if value is not None else None)
        elif self.type is bool:
            node.SetParameter(self.name, "True" if value else "False")
        else:
            node.SetParameter(self.name, str(value))

    def read(self, node):
        if self.nodeClasses is not None:
            return node.GetNodeReference(self.name)
        text = node.GetParameter(self.name)
        return text == "True" if self.type is bool else self.type(text)


class _Connector:
    """One widget bound to one field, as Slicer's guiConnectors do it for the widget classes the .ui uses."""

    def __init__(self, widget, field: _Field, qt) -> None:
        self.widget, self.field, self.callback = widget, field, None
        kind = type(widget)
        choice = next((v for v in field.validators if isinstance(v, Choice)), None)
        bounds = next((v for v in field.validators if isinstance(v, WithinRange)), None)
        if kind is qt.QComboBox and field.type in (int, float, str, bool):
            if choice is None:
                raise RuntimeError("ComboBoxToStringableConnector requires the Choice annotation to be used.")
            self.choices = choice.choices
            widget.clear()
            for c in self.choices:
                widget.addItem(str(c))
            self.signal = "currentIndexChanged(int)"
            self.read = lambda: self.choices[widget.currentIndex]
            self.write = lambda value: setattr(widget, "currentIndex", self.choices.index(value))
        elif kind is ctkSliderWidget and field.type is float:
            if bounds is None:
                raise RuntimeError("Cannot have a connection to ctkSliderWidget where the float types is unbounded.")
            widget.minimum, widget.maximum = bounds.minimum, bounds.maximum
            self.signal = "valueChanged(double)"
            self.read = lambda: widget.value
            self.write = lambda value: setattr(widget, "value", value)
        elif kind is qMRMLNodeComboBox and field.nodeClasses is not None:
            widget.nodeTypes = [cls().GetClassName() for cls in field.nodeClasses]  # as Slicer's getNodeTypes
            self.signal = "currentNodeChanged(vtkMRMLNode*)"
            self.read = widget.currentNode
            self.write = widget.setCurrentNode
        elif kind is qt.QLineEdit and field.type is str:
            self.signal = "textChanged(QString)"
            self.read = lambda: widget.text
            self.write = lambda value: setattr(widget, "text", value)
        elif kind is qt.QCheckBox and field.type is bool:
            self.signal = "toggled(bool)"
            self.read = lambda: widget.checked
            self.write = lambda value: setattr(widget, "checked", value)
        else:
            raise RuntimeError(f"Unable to create GUI connector from datatype '{field.type}' to widget type '{kind}'")

    def onChanged(self, callback) -> None:
        if self.callback is not None:
            self.widget.disconnect(self.signal, self._changed)
        self.callback = callback
        if callback is not None:
            self.widget.connect(self.signal, self._changed)

    def _changed(self) -> None:
        if self.callback is not None:
            self.callback()


def _parameterNodeWrapperModule(qt) -> types.ModuleType:
    module = types.ModuleType("slicer.parameterNodeWrapper", "minimal parameterNodeWrapper (tests only)")

    def parameterNodeWrapper(cls):
        hints = typing.get_type_hints(cls, include_extras=True)
        fields = {name: _Field(name, hint, cls) for name, hint in hints.items()}

        def __init__(self, parameterNode) -> None:
            self.parameterNode = parameterNode
            self._guis: dict[int, dict[str, _Connector]] = {}
            self._nextTag = 0
            self._updatingGui = False
            for field in fields.values():
                if not parameterNode.HasParameter(field.name):
                    field.write(parameterNode, field.default)

        def connectGui(self, gui) -> int:
            if getattr(gui, "isWidgetType", lambda: False)():
                widgets = gui.findChildren(QtWidgets.QWidget)
            else:
                widgets = list(vars(gui).values())
            mapping = {w.property("SlicerParameterName"): w for w in widgets if w.property("SlicerParameterName")}
            unknown = set(mapping) - set(fields)
            if unknown:
                raise ValueError(f"Cannot find a param with the given name: {sorted(unknown)}")
            connectors = {name: _Connector(widget, fields[name], qt) for name, widget in mapping.items()}
            tag = self._nextTag
            self._nextTag += 1
            self._guis[tag] = connectors
            for name, connector in connectors.items():
                connector.write(getattr(self, name))
                connector.onChanged(lambda name=name, connector=connector: _guiChanged(self, name, connector))
            self.parameterNode.AddObserver(vtk.vtkCommand.ModifiedEvent, lambda caller, event: _updateGui(self))
            return tag

        def disconnectGui(self, tag) -> None:
            for connector in self._guis.pop(tag, {}).values():
                connector.onChanged(None)

        def _guiChanged(self, name: str, connector: _Connector) -> None:
            with slicer.util.NodeModify(self):
                if not self._updatingGui:
                    setattr(self, name, connector.read())

        def _updateGui(self) -> None:
            if self._updatingGui:
                return
            self._updatingGui = True
            try:
                with slicer.util.NodeModify(self):
                    for connectors in self._guis.values():
                        for name, connector in connectors.items():
                            connector.write(getattr(self, name))
            finally:
                self._updatingGui = False

        for name, field in fields.items():
            setattr(cls, name, property(lambda self, f=field: f.read(self.parameterNode),
                                        lambda self, value, f=field: _write(self, f, value)))

        def _write(self, field: _Field, value) -> None:
            with slicer.util.NodeModify(self.parameterNode):
                field.write(self.parameterNode, value)

        cls.__init__ = __init__
        cls.allParameters = fields
        cls.connectGui, cls.disconnectGui = connectGui, disconnectGui
        cls.StartModify = lambda self: self.parameterNode.StartModify()
        cls.EndModify = lambda self, wasModifying: self.parameterNode.EndModify(wasModifying)
        cls.AddObserver = lambda self, event, callback, priority=0.0: self.parameterNode.AddObserver(
            event, callback, priority)
        cls.RemoveObserver = lambda self, tag: self.parameterNode.RemoveObserver(tag)
        cls.Modified = lambda self: self.parameterNode.Modified()
        return cls

    module.parameterNodeWrapper, module.Choice, module.WithinRange = parameterNodeWrapper, Choice, WithinRange
    return module


# --------------------------------------------------------------------------------------------------------------------
# slicer.ScriptedLoadableModule

def _scriptedLoadableModule(app: "SlicerApp", qt) -> types.ModuleType:
    module = types.ModuleType("slicer.ScriptedLoadableModule", "ScriptedLoadableModule base classes (tests only)")

    class ScriptedLoadableModule:
        def __init__(self, parent) -> None:
            self.parent = parent
            parent.title = type(self).__name__

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None) -> None:
            if parent is None:  # as Slicer's: a qMRMLWidget with a vertical layout, on the application's scene
                parent = qMRMLWidget()
                parent.setLayout(qt.QVBoxLayout())
                parent.setMRMLScene(slicer.mrmlScene)
                app._keepAlive.append(parent)
            self.parent = parent
            self.layout = parent.layout()
            self.moduleName = type(self).__name__.removesuffix("Widget")

        def setup(self) -> None:
            pass

        def enter(self) -> None:
            pass

        def exit(self) -> None:
            pass

        def cleanup(self) -> None:
            pass

        def self(self):
            return self

    class ScriptedLoadableModuleLogic:
        pass

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message: str, msec: int = 1000) -> None:
            app.delayed.append(message)
            app.processEvents()

        def runTest(self) -> None:
            pass

    module.__dict__.update(ScriptedLoadableModule=ScriptedLoadableModule,
                           ScriptedLoadableModuleWidget=ScriptedLoadableModuleWidget,
                           ScriptedLoadableModuleLogic=ScriptedLoadableModuleLogic,
                           ScriptedLoadableModuleTest=ScriptedLoadableModuleTest)
    return module


# --------------------------------------------------------------------------------------------------------------------
# The application

class MarkupsLogic:
    def __init__(self, app: "SlicerApp") -> None:
        self.app = app

    def JumpSlicesToLocation(self, x: float, y: float, z: float, centered: bool, viewGroup: int = -1,
                             exclude=None) -> None:
        if not all(isinstance(v, (int, float)) for v in (x, y, z)) or not isinstance(centered, bool):
            raise TypeError(f"JumpSlicesToLocation(double, double, double, bool): got {(x, y, z, centered)}")
        self.app.jumps.append(((float(x), float(y), float(z)), centered))


class PlotsLogic:
    def __init__(self, app: "SlicerApp") -> None:
        self.app = app

    def ShowChartInLayout(self, chartNode) -> None:
        if not isinstance(chartNode, slicer.vtkMRMLPlotChartNode):
            raise TypeError(f"ShowChartInLayout(vtkMRMLPlotChartNode*): got {chartNode!r}")
        self.app.charts.append(chartNode)


class _Module:
    def __init__(self, logic=None, widget=None) -> None:
        self._logic, self._widget = logic, widget

    def logic(self):
        return self._logic

    def widgetRepresentation(self):
        return self._widget


class _Application:
    """``slicer.app``: the event loop and the signals a module connects to."""

    def __init__(self, app: "SlicerApp") -> None:
        self._app = app

    def processEvents(self) -> None:
        self._app.processEvents()

    def connect(self, signal: str, slot) -> None:
        self._app.appConnections.append((signal, slot))


class SlicerApp:
    """What a test sees of the emulated application: the scene, and what the code asked of the application."""

    def __init__(self, scene) -> None:
        self.scene = scene
        self.qapp = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
        self.errors: list[tuple[str, dict]] = []  # slicer.util.errorDisplay(text, **kwargs)
        self.messages: list[tuple[str, str]] = []  # warningDisplay/infoDisplay
        self.delayed: list[str] = []  # delayDisplay
        self.jumps: list[tuple[tuple[float, float, float], bool]] = []  # JumpSlicesToLocation
        self.charts: list = []  # ShowChartInLayout
        self.dialogs: list[tuple[str, tuple]] = []
        self.dialogAnswers: list = []  # popped by QFileDialog/QMessageBox/confirm*Display, in order
        self.appConnections: list = []
        self.exceptions: list[BaseException] = []  # raised in Qt slots and VTK observers
        self.moduleWidgets: dict[str, Any] = {}
        self._keepAlive: list = []
        self.qt = _qtModule()
        self.ctk = _ctkModule()

    def processEvents(self, seconds: float = 0.0) -> None:
        """Run the Qt event loop (timers included) for ``seconds`` (once when 0)."""
        deadline = time.monotonic() + seconds
        while True:
            self.qapp.processEvents(QtCore.QEventLoop.ProcessEventsFlag.AllEvents, 50)
            if time.monotonic() >= deadline:
                return
            time.sleep(0.005)

    def waitUntil(self, condition: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
        """Run the event loop until ``condition()`` holds; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            self.processEvents()
            time.sleep(0.01)

    def addModuleWidget(self, name: str, widgetClass) -> Any:
        """Build a scripted module's widget as Slicer does (instance, then ``setup()``); ``slicer.modules.<name
        lower>`` then has it as ``widgetRepresentation().self()``."""
        widget = widgetClass()
        widget.setup()
        self.moduleWidgets[name] = widget
        setattr(slicer.modules, name.lower(), _Module(widget=widget))
        return widget

    def _loadVolume(self, path, properties=None, labelmap: bool = False):
        scene = self.scene
        name = (properties or {}).get("name") or Path(path).name.split(".")[0]
        node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode",
                                       scene.GenerateUniqueName(name))
        storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
        storage.SetFileName(str(path))
        if not storage.ReadData(node):
            scene.RemoveNode(node)
            scene.RemoveNode(storage)
            raise RuntimeError(f"Failed to load {path}")
        node.SetAndObserveStorageNodeID(storage.GetID())
        node.CreateDefaultDisplayNodes()
        return node

    def _patches(self) -> list[tuple[Any, str, Any]]:
        modules = types.SimpleNamespace(markups=_Module(logic=MarkupsLogic(self)),
                                        plots=_Module(logic=PlotsLogic(self)))
        util = slicer.util

        def getModuleWidget(name):
            widget = self.moduleWidgets.get(name if isinstance(name, str) else name.name)
            if widget is None:
                raise RuntimeError(f"Could not find module widget {name}")
            return widget

        def selectModule(name) -> None:
            getModuleWidget(name).enter()

        def pip_install(requirements) -> None:
            raise AssertionError(f"pip_install({requirements!r}) called in a test")

        return [
            (slicer, "mrmlScene", self.scene), (slicer, "app", _Application(self)), (slicer, "modules", modules),
            (slicer, "qMRMLWidget", qMRMLWidget), (slicer, "qMRMLNodeComboBox", qMRMLNodeComboBox),
            (slicer, "qMRMLCheckableNodeComboBox", qMRMLCheckableNodeComboBox),
            (util, "errorDisplay", lambda text, windowTitle=None, parent=None, standardButtons=None, **kwargs:
                self.errors.append((text, kwargs))),
            (util, "warningDisplay", lambda text, windowTitle=None, parent=None, standardButtons=None, **kwargs:
                self.messages.append(("warning", text))),
            (util, "infoDisplay", lambda text, windowTitle=None, parent=None, standardButtons=None, **kwargs:
                self.messages.append(("info", text))),
            (util, "confirmOkCancelDisplay", lambda text, windowTitle=None, parent=None, **kwargs:
                _dialog("confirmOkCancelDisplay", text)),
            (util, "confirmYesNoDisplay", lambda text, windowTitle=None, parent=None, **kwargs:
                _dialog("confirmYesNoDisplay", text)),
            (util, "delayDisplay", lambda message, autoCloseMsec=1000, parent=None, **kwargs:
                self.delayed.append(message)),
            (util, "pip_install", pip_install),
            (util, "loadVolume", lambda path, properties=None, returnNode=False: self._loadVolume(path, properties)),
            (util, "loadLabelVolume", lambda path, properties=None, returnNode=False:
                self._loadVolume(path, properties, labelmap=True)),
            (util, "getModuleWidget", getModuleWidget), (util, "selectModule", selectModule),
        ]


@contextlib.contextmanager
def slicerApp(scene, freshModules: tuple[str, ...] = ()):
    """The emulated application around ``scene`` (see the module docstring); everything patched is put back on exit.

    ``freshModules`` are imported anew inside (and dropped again on exit), so that code written for Slicer
    (``import qt`` at module level) binds to this layer and never leaks into other tests; modules first imported
    inside that import ``qt``, ``ctk`` or the parameter node wrapper are dropped on exit as well.
    """
    app = SlicerApp(scene)
    parameterNodeWrapper = _parameterNodeWrapperModule(app.qt)
    scripted = _scriptedLoadableModule(app, app.qt)
    injected = {"qt": app.qt, "ctk": app.ctk, "slicer.parameterNodeWrapper": parameterNodeWrapper,
                "slicer.ScriptedLoadableModule": scripted}
    saved = {name: sys.modules.get(name) for name in (*injected, *freshModules)}
    before = set(sys.modules)
    missing = object()
    patches = app._patches()
    patched = [(owner, name, getattr(owner, name, missing)) for owner, name, _ in patches]
    previousHook = sys.excepthook
    try:
        for name in freshModules:
            sys.modules.pop(name, None)
        sys.modules.update(injected)
        slicer.parameterNodeWrapper = parameterNodeWrapper
        slicer.ScriptedLoadableModule = scripted
        for owner, name, value in patches:
            setattr(owner, name, value)
        sys.excepthook = lambda kind, error, trace: app.exceptions.append(error)
        _CURRENT.append(app)
        yield app
    finally:
        _CURRENT.remove(app)
        sys.excepthook = previousHook
        for widget in app.moduleWidgets.values():
            with contextlib.suppress(Exception):
                widget.cleanup()
        for widget in QtWidgets.QApplication.allWidgets():  # no widget keeps observing the scene
            if isinstance(widget, (qMRMLWidget, qMRMLNodeComboBox)) and widget.mrmlScene() is scene:
                widget.setMRMLScene(None)
        app.processEvents()
        for owner, name, value in patched:
            if value is missing:
                with contextlib.suppress(AttributeError):
                    delattr(owner, name)
            else:
                setattr(owner, name, value)
        for name in ("parameterNodeWrapper", "ScriptedLoadableModule"):
            with contextlib.suppress(AttributeError):
                delattr(slicer, name)
        shimModules = set(injected.values())
        for name in set(sys.modules) - before:
            module = sys.modules[name]
            if not isinstance(module, types.ModuleType):
                continue
            if name in freshModules or any(value in shimModules for value in vars(module).values()
                                            if isinstance(value, types.ModuleType)):
                del sys.modules[name]
                parent, _, child = name.rpartition(".")
                if parent in sys.modules and getattr(sys.modules[parent], child, None) is module:
                    delattr(sys.modules[parent], child)
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


__all__ = ["slicerApp", "SlicerApp", "wrapped", "PythonQtObject", "CUSTOM_WIDGETS", "QUiLoader", "qMRMLWidget",
           "qMRMLNodeComboBox", "qMRMLCheckableNodeComboBox", "ctkCollapsibleButton", "ctkSliderWidget",
           "ctkPathLineEdit"]
