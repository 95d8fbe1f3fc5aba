"""Prediction: sliding windows over a region of a segment, blended, streamed to a zarr store.

``predict(config, stop)`` is the engine (events while it runs, :class:`PredictFinished` as its
result; :mod:`napari_inkdetect.engine`). The package is laid out by job:

- :mod:`.config`: :class:`PredictConfig`, the run as plain data, including where it runs;
- :mod:`.events`: what a run reports;
- :mod:`.job`: the config resolved against the data and model (geometry, output chunks,
  provenance); :func:`prepare_output` creates or reopens the store;
- :mod:`.pipeline`: windows read, batched and prefetched on the host;
- :mod:`.blending`: the model on a batch, TTA undone, chunk-local blending;
- :mod:`.local`: the run in this process, and :func:`predict_chunk`, one chunk alone;
- :mod:`.cluster`: the same run on dask workers, one :func:`predict_chunk` task per chunk;
- :mod:`.predictor`: :func:`predict`, which sends a config where it says it runs.

The store's layout lives in :mod:`napari_inkdetect.io.prediction_store` (no torch), which the
napari reader, export and evaluation use to read predictions.
"""

from napari_inkdetect._lazy import lazy_exports

#: public name -> the module that defines it, imported on first use (napari_inkdetect._lazy)
_EXPORTS = {
    "BatchDone": "napari_inkdetect.inference.events",
    "ChunkDone": "napari_inkdetect.inference.events",
    "ClusterReady": "napari_inkdetect.inference.events",
    "PredictBatchHalved": "napari_inkdetect.inference.events",
    "PredictConfig": "napari_inkdetect.inference.config",
    "PredictFinished": "napari_inkdetect.inference.events",
    "PredictJob": "napari_inkdetect.inference.job",
    "PredictStarted": "napari_inkdetect.inference.events",
    "open_job": "napari_inkdetect.inference.job",
    "parse_start_layers": "napari_inkdetect.inference.config",
    "pending_chunks": "napari_inkdetect.inference.local",
    "predict": "napari_inkdetect.inference.predictor",
    "predict_chunk": "napari_inkdetect.inference.local",
    "prepare_output": "napari_inkdetect.inference.job",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
