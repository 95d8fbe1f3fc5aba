"""The ``napari-inkdetect`` command line.

Every subcommand turns the package's own errors into one line on stderr and exit status 1;
a traceback reaching the user is a bug. The flags of ``train``, ``predict`` and ``export`` are
made from the fields of their configs (:mod:`napari_inkdetect.options`): a new setting gets
its flag by being declared there. Building the parser imports no torch.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from napari_inkdetect.cli._common import EXIT_INPUT_ERROR, EXIT_INTERRUPTED, version
from napari_inkdetect.cli.misc import add_misc
from napari_inkdetect.cli.predict import add_predict
from napari_inkdetect.cli.scoring import add_compare, add_evaluate, add_export
from napari_inkdetect.cli.train import add_train
from napari_inkdetect.errors import InkDetectError

__all__ = ["EXIT_INPUT_ERROR", "EXIT_INTERRUPTED", "build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and of ``python -m napari_inkdetect``."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)  # a flag's own parser may refuse its text (ConfigError)
        if not hasattr(args, "run"):
            parser.print_help()
            return 0
        return int(args.run(args) or 0)
    except InkDetectError as exc:
        print(f"napari-inkdetect: error: {exc}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except OSError as exc:  # a disk or path problem no layer put into words: still one line
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"napari-inkdetect: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except KeyboardInterrupt:
        print("napari-inkdetect: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand (each sets ``run``)."""
    parser = argparse.ArgumentParser(
        prog="napari-inkdetect", description="Find ink in Herculaneum scroll segments."
    )
    parser.add_argument("--version", action="version", version=version())
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    add_misc(sub)
    add_train(sub)
    add_predict(sub)
    add_evaluate(sub)
    add_compare(sub)
    add_export(sub)
    return parser
