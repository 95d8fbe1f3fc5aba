"""Run a prediction in the background and keep its overlay layers in step with the disk.

Shared by the Predict dock (one-shot and follow-the-view runs) and the Finetune dock (live
preview while training). The engine writes every finished chunk to its zarr before yielding
``ChunkDone``; the overlay layers read that zarr, so showing new chunks is a throttled
``layer.refresh()`` on the GUI thread and nothing is lost when napari closes. The run itself
(stop, errors, cleanup) is a :class:`~napari_inkdetect._widgets._runs.RunController`'s.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from napari.layers import Image
from qtpy.QtCore import QObject, QTimer
from qtpy.QtWidgets import QLabel, QProgressBar, QPushButton

from napari_inkdetect._napari_layers import (
    INK_COLORMAP,
    PREDICTION,
    PREVIEW,
    ROLE_KEY,
    prediction_layers,
)
from napari_inkdetect._widgets._runs import RunController, RunOwner, StoppableWorker
from napari_inkdetect.errors import InkDetectError
from napari_inkdetect.inference import (
    BatchDone,
    ChunkDone,
    ClusterReady,
    PredictConfig,
    PredictFinished,
    PredictStarted,
    predict,
)
from napari_inkdetect.io.prediction_store import LEVELS_ABOVE
from napari_inkdetect.postprocess import ProfileAccumulator

REFRESH_MS = 250  # at most 4 refreshes a second: each re-reads the visible plane from disk
EventSource = Callable[[PredictConfig, threading.Event], Iterator[Any]]


def relay(source: EventSource, config: PredictConfig, stop: threading.Event) -> Iterator[Any]:
    """The worker's generator: the engine's events, one yield each (the engine holds the
    output's lock, on dask workers too: a second dock or process is refused)."""
    return (yield from source(config, stop))


def visible_region(
    viewer: Any, layer: Image, max_side: int | None = None, snap: int = 64
) -> tuple[int, ...]:
    """``(y0, x0, y1, x1)`` of ``layer``'s full-resolution pixels in view, at most
    ``max_side`` on a side (centred on the view), clipped to the layer. Edges snap outwards
    to a ``snap``-px grid, so a small pan gives the same region (and the same output).

    Computed from the camera and the canvas size, so it is right before anything is drawn.
    """
    camera = camera_of(viewer)
    centre = np.asarray(camera.center, float)[-2:]
    half = np.asarray(canvas_size(viewer), float) / max(float(camera.zoom), 1e-9) / 2
    scale, translate = np.asarray(layer.scale)[-2:], np.asarray(layer.translate)[-2:]
    full = np.asarray(layer.level_shapes[0] if layer.multiscale else layer.data.shape)[-2:]
    lo = np.clip(np.floor((centre - half - translate) / scale), 0, full)
    hi = np.clip(np.ceil((centre + half - translate) / scale), 0, full)
    if max_side:
        middle = (lo + hi) / 2
        half_side = np.minimum((hi - lo) / 2, max_side / 2)
        lo = np.maximum(0, np.floor(middle - half_side))
        hi = np.minimum(full, np.ceil(middle + half_side))
    if snap > 1:
        lo = np.floor(lo / snap) * snap
        hi = np.minimum(full, np.ceil(hi / snap) * snap)
    if np.any(hi - lo < 1):
        raise InkDetectError("the view shows none of the volume: pan onto it first")
    return (int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1]))


def camera_of(viewer: Any) -> Any:
    """napari >= 0.9 keeps the camera in ``viewer.scene``; older versions on the viewer."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if hasattr(scene, "camera") else viewer.camera


def canvas_size(viewer: Any) -> tuple[int, int]:
    """The canvas ``(height, width)`` in screen pixels (``viewer.canvas`` from napari 0.9)."""
    size = getattr(getattr(viewer, "canvas", None), "size", None)
    size = size if size is not None else getattr(viewer, "_canvas_size", None)
    return tuple(size) if size is not None and min(size) > 0 else (600, 800)


class PredictionRunner(RunOwner, QObject):
    """One background prediction at a time, drawn into overlay layers as chunks land.

    ``start(config, volume)`` runs ``source`` (the engine's ``predict`` or a cluster driver)
    in a thread worker; ``stop()`` asks it to stop after the current batch (finished chunks
    stay on disk). ``on_event`` sees every engine event on the GUI thread; ``on_done`` is
    called once the worker has finished, with the ``PredictFinished`` event or ``None``.
    The layers' role (metadata) is ``role``: by default ``preview`` for the one-plane
    (``two_d``) training preview, else ``prediction`` (what Export offers). ``button``,
    ``status`` and ``progress`` are the owning dock's, for its :class:`RunController`.
    """

    def __init__(
        self,
        viewer: Any,
        on_event: Callable[[Any], None] | None = None,
        on_done: Callable[[PredictFinished | None], None] | None = None,
        two_d: bool = False,
        parent: QObject | None = None,
        role: str | None = None,
        button: QPushButton | None = None,
        status: QLabel | None = None,
        progress: QProgressBar | None = None,
    ) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.on_event, self.on_done = on_event, on_done
        self.two_d = two_d
        self.role = role or (PREVIEW if two_d else PREDICTION)
        self.run = RunController(
            self._on_event,
            on_done=self._on_finished,
            button=button,
            status=status,
            progress=progress,
            parent=self,
        )
        self.layers: list[Any] = []
        self.profile: ProfileAccumulator | None = None
        self.finished: PredictFinished | None = None
        self._volume: Image | None = None
        self._name: str | None = None
        self._refresh_pending = False
        self._last_refresh = 0.0
        #: (layer or None to add one, data, kwargs): hidden layers set up after the run
        self._pending: list[tuple[Any, Any, dict[str, Any]]] = []
        self._placeholder: Image | None = None  # prepare()'s layer, until a run shows in it
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self.refresh)

    @property
    def error(self) -> str | None:
        """The last run's error as shown to the user (``None``: it had none)."""
        return self.run.error

    def start(
        self,
        config: PredictConfig,
        volume: Image,
        name: str | None = None,
        source: EventSource = predict,
    ) -> StoppableWorker:
        """Run ``config``; overlay layers are named ``name`` (default: from the output)."""
        if self.running:
            raise InkDetectError("a prediction is already running: stop it first")
        self._volume, self._name = volume, name
        self.finished, self.profile = None, None
        if not self.two_d and not _multiscale_output(config, volume):
            self.prepare(volume, name)  # the click pays for the layer, not the stream
        return self.run.start(relay, source, config)

    def stop(self, show: bool = True) -> None:
        """Ask the engine to stop after its current batch (``show``: on the button)."""
        self.run.stop(show)

    def shutdown(self) -> None:
        """The owner is going away: stop, and ignore whatever the worker still yields."""
        self.run.shutdown()

    # ------------------------------------------------------------------ layers

    def _show(self, event: PredictStarted) -> None:
        """Add the overlay layers, or point the existing ones at the new output."""
        volume = self._volume
        tuples = prediction_layers(
            event.path,
            volume_scale=tuple(volume.scale),
            volume_translate=tuple(volume.translate),
            max_projection=not self.two_d,
            role=self.role,
        )
        if self.two_d:
            data, kwargs, _ = tuples[0]
            tuples = [(_plane(data), _flatten(kwargs), "image")]
        if self._name:
            for i, (_, kwargs, _) in enumerate(tuples):
                kwargs["name"] = self._name if i == 0 else f"{self._name} {kwargs['name']}"
        alive = [layer for layer in self.layers if layer in self.viewer.layers]
        placeholder, self._placeholder = self._placeholder, None
        if not alive and placeholder is not None and placeholder in self.viewer.layers:
            alive = [placeholder]
        same_kind = all(
            layer.multiscale == bool(kwargs.get("multiscale"))
            for layer, (_, kwargs, _) in zip(alive, tuples, strict=False)
        )
        if not same_kind:
            for layer in alive:
                self.viewer.layers.remove(layer)
            alive = []
        # napari spends 200-500 ms adding a layer (vispy visuals, controls) and 50-100 ms
        # pointing one at new data, stalls however they are split. So the overlay is the
        # layer prepare() made or the last run's (else added now); hidden layers (the max
        # projection, refreshed only at the end anyway) are added or updated after the run.
        self.layers, self._pending = [], []
        for i, (data, kwargs, _) in enumerate(tuples):
            layer = alive[i] if i < len(alive) else None
            if i == 0 and layer is None:
                self.layers.append(add_image_quietly(self.viewer, data, kwargs))
            elif i == 0 or (layer is not None and layer.visible):
                _update(layer, data, kwargs)
                self.layers.append(layer)
            else:
                self._pending.append((layer, data, kwargs))
        scale = 255.0 if event.dtype == "uint8" else 1.0
        layers = int(tuples[0][1]["metadata"]["window_length"])
        self.profile = ProfileAccumulator(event.start_layers, scale, layers)

    def prepare(self, volume: Image, name: str | None = None) -> None:
        """Add the overlay (or preview) layer now, empty, unless the last run's is still
        there: e.g. at the Finetune click rather than mid-training at the first preview.
        Unused, :meth:`drop_placeholder` removes it."""
        made = [*self.layers, self._placeholder]
        if any(layer is not None and layer in self.viewer.layers for layer in made):
            return
        ndim = 2 if self.two_d else 3
        kwargs = {
            "name": name or "ink prediction (starting)",
            "colormap": INK_COLORMAP,
            "blending": "translucent",
            "contrast_limits": (0.0, 255.0),
            "scale": tuple(volume.scale)[-ndim:],
            "translate": tuple(volume.translate)[-ndim:],
            "metadata": {ROLE_KEY: self.role},
        }
        data = np.zeros((1,) * ndim, np.uint8)
        self._placeholder = add_image_quietly(self.viewer, data, kwargs)

    def drop_placeholder(self) -> None:
        """Remove the layer :meth:`prepare` made if no run has used it."""
        layer, self._placeholder = self._placeholder, None
        if layer is not None and layer in self.viewer.layers:
            self.viewer.layers.remove(layer)

    def _finish_pending(self) -> None:
        """What :meth:`_show` left for the end of the run: add or update hidden layers."""
        pending, self._pending = self._pending, []
        for layer, data, kwargs in pending:
            if layer is not None and layer in self.viewer.layers:
                _update(layer, data, kwargs)
                self.layers.append(layer)
            elif layer is None:
                self.layers.append(add_image_quietly(self.viewer, data, kwargs))

    def refresh(self, all_layers: bool = False) -> None:
        """Re-read what is on disk (throttled; the max projection only when asked)."""
        self._refresh_pending = False
        self._last_refresh = time.perf_counter()
        for i, layer in enumerate(self.layers):
            if layer in self.viewer.layers and (i == 0 or all_layers):
                layer.refresh()

    def _schedule_refresh(self) -> None:
        if self._refresh_pending:
            return
        self._refresh_pending = True
        wait = REFRESH_MS - (time.perf_counter() - self._last_refresh) * 1000
        self._timer.start(int(max(0, wait)))

    # ------------------------------------------------------------------ events (GUI thread)

    def _on_event(self, event: Any) -> None:
        if isinstance(event, PredictStarted):
            self._show(event)
        elif isinstance(event, ChunkDone):
            if self.profile is not None:
                self.profile.add(event.array)
            self._schedule_refresh()
        elif isinstance(event, PredictFinished):
            self.finished = event
            self.refresh(all_layers=True)
        if self.on_event is not None and isinstance(
            event, PredictStarted | ClusterReady | BatchDone | ChunkDone | PredictFinished
        ):
            self.on_event(event)

    def _on_finished(self) -> None:
        """The worker is done (the controller drops this once the owner is gone)."""
        self.drop_placeholder()  # the run failed before its output existed
        self._finish_pending()
        if self.on_done is not None:
            self.on_done(self.finished)


def _plane(data: Any) -> Any:
    """Start layer 0 of a prediction (of each overview level when it has them)."""
    import dask.array as da

    if isinstance(data, list):
        return [da.from_zarr(level)[0] for level in data]
    return da.from_zarr(data)[0]


def _flatten(kwargs: dict[str, Any]) -> dict[str, Any]:
    """3D placement -> 2D (the preview shows one start layer whatever the slider says)."""
    out = dict(kwargs)
    out["scale"], out["translate"] = kwargs["scale"][1:], kwargs["translate"][1:]
    out.pop("axis_labels", None)
    return out


def add_image_quietly(viewer: Any, data: Any, kwargs: dict[str, Any]) -> Image:
    """``viewer.add_image`` leaving the selection alone: napari selects a new layer, which
    rebuilds the layer controls and takes the brush off the labels layer being painted."""
    layers = viewer.layers
    activate = getattr(layers, "_activate_on_insert", None)  # napari's switch (private)
    if activate is not None:
        layers._activate_on_insert = False
    try:
        return viewer.add_image(data, **kwargs)
    finally:
        if activate is not None:
            layers._activate_on_insert = activate


def _multiscale_output(config: PredictConfig, volume: Image) -> bool:
    """Whether the engine will write overview levels (then the overlay is multiscale):
    judged from the region, or the whole volume plane when the region is the mask's box."""
    full = volume.level_shapes[0][-2:] if volume.multiscale else volume.data.shape[-2:]
    region = config.region
    size = (region[2] - region[0], region[3] - region[1]) if region else full
    return max(size) > LEVELS_ABOVE


def _update(layer: Any, data: Any, kwargs: dict[str, Any]) -> None:
    """Point a layer at a new output, touching only what changed (each set re-slices)."""
    for key in ("scale", "translate"):
        if not np.allclose(getattr(layer, key), kwargs[key]):
            setattr(layer, key, kwargs[key])
    limits = kwargs.get("contrast_limits")
    if limits is not None and not np.allclose(layer.contrast_limits, limits):
        layer.contrast_limits = limits  # a float16 output after a uint8 one (or a placeholder)
    layer.metadata = kwargs["metadata"]
    if layer.name != kwargs["name"]:
        layer.name = kwargs["name"]
    layer.data = data
