"""``predict(config, stop)``: the prediction engine, in this process, a child or on dask.

It yields :mod:`~napari_inkdetect.inference.events` and returns the
:class:`~napari_inkdetect.inference.events.PredictFinished` it yields last (the engine
contract, :mod:`napari_inkdetect.engine`). Where it runs is the config's choice: this process
(:mod:`.local`), a spawned child (:mod:`napari_inkdetect.processes`) or dask workers
(:mod:`.cluster`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from typing import Any

from napari_inkdetect.inference.config import PredictConfig
from napari_inkdetect.inference.events import PredictFinished
from napari_inkdetect.inference.local import run_here
from napari_inkdetect.processes import run_in_child

__all__ = ["predict"]

CHILD_TARGET = "napari_inkdetect.inference:predict"


def predict(
    config: PredictConfig,
    stop: threading.Event | None = None,
    *,
    keep_cluster: bool | Callable[[], bool] = False,
) -> Generator[Any, None, PredictFinished]:
    """Predict as ``config`` says, yielding events; a set ``stop`` ends the run after the
    current batch (on a cluster: cancels queued chunks), keeping every finished chunk on disk.

    ``config.in_child`` runs it in a spawned process (the GUI's interpreter stays free, GPU
    memory is returned when it ends); ``workers``/``scheduler`` on a dask cluster.
    ``keep_cluster``: a local cluster (``workers``) stays up for the next run (the GUI's; a
    callable is asked when the run ends).
    """
    if config.in_child:
        return (yield from run_in_child(CHILD_TARGET, config.with_(in_child=False), stop))
    if config.on_cluster:
        # imported here: dask.distributed takes a second to import, which no local run needs
        from napari_inkdetect.inference.cluster import predict_on_cluster

        return (yield from predict_on_cluster(config, stop, keep_warm=keep_cluster))
    return (yield from run_here(config, stop))
