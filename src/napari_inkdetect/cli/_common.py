"""What the subcommands share: exit codes, progress lines and window summaries."""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path

EXIT_INPUT_ERROR = 1
EXIT_INTERRUPTED = 130


class PresetHelp(argparse.HelpFormatter):
    """Fills ``{preset:FIELD}`` in help texts from the device presets table, only when help
    is shown: building the parser stays free of torch (which the table's package imports)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = super()._get_help_string(action) or ""
        if "{preset:" not in text:
            return text
        from napari_inkdetect.training.presets import preset_help

        return re.sub(r"\{preset:(\w+)\}", lambda m: preset_help(m.group(1)), text)


def window_summary(starts: Sequence[int], layers: int) -> str:
    """``window 9-30, centre 20`` (``windows 9-30 .. 13-34, centres 20..24``): the layers
    each window covers and the centre it is shown at (see :mod:`napari_inkdetect.windows`)."""
    from napari_inkdetect.windows import window_centre

    a, b = min(starts), max(starts)
    if a == b:
        return f"window {a}-{a + layers - 1}, centre {window_centre(a, layers)}"
    centres = f"{window_centre(a, layers)}..{window_centre(b, layers)}"
    return f"windows {a}-{a + layers - 1} .. {b}-{b + layers - 1}, centres {centres}"


def window_length(prediction: Path) -> int:
    """The window length a prediction's provenance records."""
    from napari_inkdetect.io.prediction_store import open_prediction

    return int(open_prediction(prediction)[1]["window_length"])


def span(starts: Sequence[int]) -> str:
    return f"{starts[0]}..{starts[-1]}" if len(starts) > 1 else str(starts[0])


def say(bar, quiet: bool, text: str) -> None:
    if quiet:
        return
    if bar is not None:
        bar.write(text)
    else:
        print(text)


def choice(first: bool, first_value, second: bool, second_value):
    """The value of whichever of two exclusive flags is set; None (the default) for neither."""
    return first_value if first else second_value if second else None


def as_str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def version() -> str:
    from napari_inkdetect import __version__

    return f"napari-inkdetect {__version__}"
