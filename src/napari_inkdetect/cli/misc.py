"""The small subcommands: ``sample``, ``info``, ``view`` and ``models``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

__all__ = ["add_misc"]


def add_misc(sub) -> None:
    """``sample``, ``info``, ``view`` and ``models``."""
    _add(sub, "sample", "write the synthetic crackle segment in a real segment's layout", _sample)
    _add(sub, "info", "describe a surface volume (layout, shape, dtype, voxel size)", _info)
    _add(sub, "view", "open napari with a segment (default: the sample) and the plugin", _view)
    _add(sub, "models", "list the model architectures with parameters and FLOPs", _models)


def _add(sub, name: str, help_text: str, run: Callable) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.set_defaults(run=run)
    if name == "sample":
        p.add_argument("out_dir", type=Path, help="folder to write <id>/layers/NN.tif etc. into")
        p.add_argument("--id", default="synthetic", help="segment id (folder and file prefix)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--shape", default="48,512,768", help="Z,Y,X (default 48,512,768)")
    elif name in ("info", "view"):
        p.add_argument("segment", nargs="?" if name == "view" else None, type=Path)
        p.add_argument("--reverse", action="store_true", help="flip the depth order")


def _sample(args: argparse.Namespace) -> int:
    from napari_inkdetect.synthetic import make_segment, write_segment

    shape = _parse_shape(args.shape)
    folder = write_segment(make_segment(shape=shape, seed=args.seed), args.out_dir, args.id)
    print(folder)
    return 0


def _parse_shape(text: str) -> tuple[int, int, int]:
    from napari_inkdetect.errors import ConfigError

    try:
        z, y, x = (int(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--shape {text!r}: expected three integers Z,Y,X") from None
    if min(z, y, x) < 1:
        raise ConfigError(f"--shape {text!r}: sizes must be positive")
    return z, y, x


def _info(args: argparse.Namespace) -> int:
    from napari_inkdetect.io.segment import open_segment

    seg = open_segment(args.segment, reverse=args.reverse)
    nz, ny, nx = seg.shape
    print(f"segment   {seg.segment_id} ({seg.layout}) at {seg.path}")
    print(
        f"volume    {nz} layers x {ny} x {nx} px, {seg.dtype}, {seg.volume.nbytes / 2**30:.2f} GiB"
    )
    voxel = f"{seg.voxel_size_um} um" if seg.voxel_size_um else "unknown"
    print(f"voxel     {voxel}{'  (depth reversed)' if seg.reversed else ''}")
    print(f"mask      {seg.mask_path or '-'}")
    print(f"labels    {seg.inklabels_path or '-'}")
    for name, path in seg.other_labels.items():
        print(f"          {name}: {path}")
    return 0


def _view(args: argparse.Namespace) -> int:
    from napari_inkdetect._napari_app import run_viewer

    run_viewer(args.segment, reverse=args.reverse)
    return 0


def _models(args: argparse.Namespace) -> int:
    from napari_inkdetect.models.registry import model_table

    print(model_table())
    return 0
