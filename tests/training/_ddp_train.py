"""Run under torchrun by tests/training/test_distributed_training.py.

``python -m torch.distributed.run ... tests/_ddp_train.py RUN.json`` trains each config in
the JSON list ``[[config, stop_after], ...]`` in turn; rank 0 sets the stop event after step
``stop_after`` (0: never), so the other ranks only stop if the stop flag reaches them. Each
rank prints one JSON line per run: the event kinds it saw and how the run ended.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

from napari_inkdetect.training import StepDone, TrainConfig, TrainFinished, train
from napari_inkdetect.training.distributed import Distributed


def _run(config: TrainConfig, stop_after: int) -> dict:
    stop, kinds, finished = threading.Event(), [], None
    for event in train(config, stop):
        kinds.append(type(event).__name__)
        if isinstance(event, StepDone) and event.step == stop_after:
            stop.set()
        if isinstance(event, TrainFinished):
            finished = event
    return {"rank": Distributed.from_env().rank, "events": kinds,
            "steps": finished.steps, "stopped": finished.stopped}  # fmt: skip


if __name__ == "__main__":
    for data, stop_after in json.loads(Path(sys.argv[1]).read_text()):
        line = json.dumps(_run(TrainConfig.from_dict(data), stop_after)) + "\n"
        sys.stdout.write(line)  # one write: the ranks' lines do not interleave
        sys.stdout.flush()
