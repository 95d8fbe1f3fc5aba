"""Segment I/O benchmark: open time, napari add time, bytes read, peak RSS, block reads.

Run: ``python benchmarks/bench_io.py`` (under ``xvfb-run -a`` on a machine without a display
to include the napari rows). Writes a 65 x 8192 x 8192 uint16 stack (8.7 GB, sparse files, so
it costs little disk) to a temporary folder unless ``--folder`` points at an existing one.

Targets (issue 2): open < 0.5 s; peak RSS increase < 300 MB when added to napari; one
22 x 256 x 256 training block within 2x of reading the same bytes with tifffile directly.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

from napari_inkdetect import open_segment
from napari_inkdetect.io.pyramid import flush_cache_writes
from napari_inkdetect.io.sources import ReadCounter


def make_stack(folder: Path, layers: int, size: int) -> None:
    (folder / "layers").mkdir(parents=True, exist_ok=True)
    for z in range(layers):
        path = folder / "layers" / f"{z:02d}.tif"
        if not path.exists():
            tifffile.imwrite(path, shape=(size, size), dtype=np.uint16)  # sparse, header only
            # give each layer a little real data so reads are not all holes
            mm = tifffile.memmap(path)
            mm[::97, :] = z * 1000 + 7
            mm.flush()
            del mm


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_open(folder: Path, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        open_segment(folder)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def time_napari_add(folder: Path) -> tuple[float, int, float] | None:
    try:
        import napari
    except ImportError:
        return None
    viewer = napari.Viewer(show=False)
    rss0, bytes0 = peak_rss_mb(), ReadCounter.bytes_read
    t = time.perf_counter()
    viewer.open(folder, plugin="napari-inkdetect")
    viewer.dims.set_current_step(0, 30)  # move the depth slider once, like a user
    elapsed = time.perf_counter() - t
    result = (elapsed, ReadCounter.bytes_read - bytes0, peak_rss_mb() - rss0)
    viewer.close()
    return result


def time_blocks(folder: Path, n: int, depth: int = 22, tile: int = 256) -> dict[str, float]:
    seg = open_segment(folder)
    nz, ny, nx = seg.shape
    files = seg.layer_files
    maps = [tifffile.memmap(f, mode="r") for f in files]
    rng = np.random.default_rng(0)
    spots = [
        (
            int(rng.integers(0, nz - depth)),
            int(rng.integers(0, ny - tile)),
            int(rng.integers(0, nx - tile)),
        )
        for _ in range(n)
    ]

    def direct(z, y, x):
        return np.stack([np.array(m[y : y + tile, x : x + tile]) for m in maps[z : z + depth]])

    def ours(z, y, x):
        return seg.read_block((z, z + depth), (y, y + tile), (x, x + tile))

    def via_dask(z, y, x):
        return seg.volume[z : z + depth, y : y + tile, x : x + tile].compute(scheduler="sync")

    results = {}
    for name, fn in (
        ("tifffile memmap (baseline)", direct),
        ("Segment.read_block", ours),
        ("dask volume[...]", via_dask),
    ):
        fn(*spots[0])  # warm
        t = time.perf_counter()
        for spot in spots:
            fn(*spot)
        results[name] = (time.perf_counter() - t) / n * 1000
    assert np.array_equal(direct(*spots[1]), ours(*spots[1]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, help="existing or new folder for the stack")
    parser.add_argument("--layers", type=int, default=65)
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--blocks", type=int, default=50)
    args = parser.parse_args()
    folder = (
        args.folder or Path(tempfile.gettempdir()) / f"inkdetect-bench-{args.layers}x{args.size}"
    )
    make_stack(folder, args.layers, args.size)
    gib = args.layers * args.size * args.size * 2 / 2**30
    print(f"stack: {args.layers} x {args.size} x {args.size} uint16 = {gib:.1f} GiB at {folder}")
    opened = time_open(folder)
    print(f"open_segment {opened * 1000:.1f} ms (target < 500 ms, ratio {opened / 0.5:.2f})")
    os.environ["NAPARI_INKDETECT_CACHE"] = tempfile.mkdtemp(prefix="inkdetect-bench-cache-")
    for state in ("cold", "warm"):  # cold: pyramid levels computed; warm: read from the cache
        added = time_napari_add(folder)
        if added is None:
            print("napari add                    skipped (napari not installed)")
            break
        seconds, nbytes, rss = added
        print(
            f"napari open + 1 slider move, {state} pyramid cache: {seconds * 1000:.0f} ms, "
            f"read {nbytes / 2**20:.1f} MiB of {gib * 1024:.0f} MiB, "
            f"peak RSS +{rss:.0f} MB (target < 300 MB)"
        )
        flush_cache_writes()
    blocks = time_blocks(folder, args.blocks)
    base = blocks["tifffile memmap (baseline)"]
    print(f"22 x 256 x 256 block reads (mean of {args.blocks}, random positions):")
    for name, ms in blocks.items():
        print(f"  {name:28s}{ms:8.2f} ms   ratio to baseline {ms / base:.2f} (target <= 2)")
    print(f"pid {os.getpid()} peak RSS {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
