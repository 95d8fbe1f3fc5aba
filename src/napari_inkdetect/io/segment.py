"""Open a surface volume lazily, whatever layout it has on disk.

``open_segment`` reads headers only: the volume is a dask array whose chunks are one layer deep
and spatially tiled, so displaying or training on a window reads about that window's bytes.
Masks and labels beside the volume are found by the naming conventions of scroll segments
(``layers/`` + ``<id>_mask.png``), Kaggle fragments (``surface_volume/`` + ``mask.png``) and
ScrollPrize villa labels, and are also lazy.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np

from napari_inkdetect.errors import SegmentError
from napari_inkdetect.io import labels as labels_io
from napari_inkdetect.io.images import TIFF_SUFFIXES, image_shape
from napari_inkdetect.io.sources import TiffLayers, ZarrVolume, check_dtype, inspect_tiff

SCROLL_VOXEL_UM = 7.91
FRAGMENT_VOXEL_UM = 3.24
DEFAULT_CHUNK = 512
#: sizes beyond any scan (a damaged header): refused before the lazy volume is built
MAX_SIDE, MAX_LAYERS = 1 << 20, 1 << 16
_LAYER_NAME = re.compile(r"^(\d+)\.tiff?$", re.IGNORECASE)


@dataclass(frozen=True, eq=False)
class Segment:
    """A lazily opened surface volume and what lies beside it.

    ``volume`` is ``(Z, Y, X)`` in the stored dtype, with depth already reversed when
    ``reversed`` is set. ``mask`` (bool) and ``inklabels`` (0/1/2) are lazy dask arrays or None.
    """

    path: Path
    volume: da.Array
    layout: str
    segment_id: str
    voxel_size_um: float | None
    reversed: bool = False
    layer_files: tuple[Path, ...] = ()
    first_layer: int = 0
    mask_path: Path | None = None
    inklabels_path: Path | None = None
    other_labels: dict[str, Path] = field(default_factory=dict)
    source: Any = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.volume.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.volume.dtype

    @property
    def mask(self) -> da.Array | None:
        if self.mask_path is None:
            return None
        read = dask.delayed(labels_io.read_mask, pure=True)(self.mask_path, self.shape[1:])
        return da.from_delayed(read, self.shape[1:], dtype=bool)

    @property
    def inklabels(self) -> da.Array | None:
        if self.inklabels_path is None:
            return None
        read = dask.delayed(read_segment_labels, pure=True)(self, self.inklabels_path)
        return da.from_delayed(read, self.shape[1:], dtype=np.uint8)

    def read_mask(self) -> np.ndarray | None:
        """The mask decoded now (bool), or None."""
        return (
            None if self.mask_path is None else labels_io.read_mask(self.mask_path, self.shape[1:])
        )

    def read_block(self, z: tuple[int, int], y: tuple[int, int], x: tuple[int, int]) -> np.ndarray:
        """Read ``volume[z0:z1, y0:y1, x0:x1]`` straight from the files, without dask.

        The fast path for training and inference, which read many small random blocks.
        """
        (z0, z1), (y0, y1), (x0, x1) = z, y, x
        nz = self.shape[0]
        if not (0 <= z0 <= z1 <= nz):
            raise SegmentError(f"{self.path}: layers {z0}..{z1} outside the volume's 0..{nz}")
        if not self.reversed:
            return self.source[z0:z1, y0:y1, x0:x1]
        return self.source[nz - z1 : nz - z0, y0:y1, x0:x1][::-1]

    def contrast_limits(self, n_blocks: int = 9, block: int = 256) -> tuple[float, float]:
        """Display range from a few small blocks of the middle layers: never a full pass."""
        nz, ny, nx = self.shape
        rng = np.random.default_rng(0)
        samples = []
        for _ in range(n_blocks):
            z = int(rng.integers(nz // 4, max(nz // 4 + 1, 3 * nz // 4)))
            y0 = int(rng.integers(0, max(1, ny - block)))
            x0 = int(rng.integers(0, max(1, nx - block)))
            samples.append(self.read_block((z, z + 1), (y0, y0 + block), (x0, x0 + block)).ravel())
        values = np.concatenate(samples)
        values = values[values > 0] if np.any(values > 0) else values
        low, high = np.percentile(values, (0.5, 99.5)) if values.size else (0, 1)
        if high <= low:
            high = low + 1
        return float(low), float(high)

    def cache_key(self) -> str:
        """A key that changes when any layer file changes (for on-disk caches)."""
        return _fingerprint(self.path, self.layer_files, f"reversed={self.reversed}")


def read_segment_labels(segment: Segment, path: Path) -> np.ndarray:
    """Labels beside a segment in any encoding: villa pair, sparse 0/1/2 or Kaggle binary."""
    path = Path(path)
    villa = labels_io.VillaPaths.from_inklabels(path)
    if villa.supervision_mask.exists():
        return labels_io.read_villa_labels(villa, segment.shape[1:])[0]
    return labels_io.read_labels(path, mask=segment.read_mask(), shape=segment.shape[1:])


def open_segment(
    path: str | Path,
    reverse: bool = False,
    chunk: int = DEFAULT_CHUNK,
    voxel_size_um: float | None = None,
) -> Segment:
    """Open any supported surface-volume layout lazily (headers only).

    Parameters
    ----------
    path : a segment folder (``layers/``), a Kaggle fragment folder (``surface_volume/``), a
        folder of ``NN.tif``, a multi-page TIFF, or a zarr / OME-Zarr array.
    reverse : flip the depth order (segments stored inside-out).
    chunk : spatial chunk size of the dask array (chunks are always one layer deep).
    voxel_size_um : override the voxel size the layout implies.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise SegmentError(f"{path}: no such file or folder")
    layout = detect_layout(path)
    if layout is None:
        raise SegmentError(
            f"{path}: no surface volume found (expected layers/NN.tif, surface_volume/NN.tif, "
            "a folder of NN.tif, a multi-page TIFF or a zarr array)"
        )
    opener = {"zarr": _open_zarr, "multipage-tiff": _open_multipage}.get(layout, _open_layers)
    fields = opener(path, layout)
    source = fields.pop("source")
    check_dtype(source.dtype, path)
    check_volume_shape(source.shape, path)
    volume = da.from_array(
        source,
        chunks=(1, chunk, chunk),
        name=f"inkdetect-volume-{_fingerprint(path, fields.get('layer_files', ()))}",
        asarray=False,
        fancy=False,
        lock=False,
        meta=np.empty((0, 0, 0), source.dtype),
    )
    if reverse:
        volume = volume[::-1]
    folder = path if path.is_dir() and layout != "zarr" else path.parent
    segment_id = fields.pop("segment_id")
    voxel = voxel_size_um or _meta_voxel_size(folder) or fields.pop("voxel_size_um", None)
    fields.pop("voxel_size_um", None)
    segment = Segment(
        path=path,
        volume=volume,
        layout=layout,
        segment_id=segment_id,
        voxel_size_um=voxel,
        reversed=reverse,
        source=source,
        **_find_companions(folder, segment_id),
        **fields,
    )
    _check_companion_shapes(segment)
    return segment


def check_volume_shape(shape: tuple[int, ...], where: Path) -> None:
    """Refuse an empty volume, or one whose header claims a size no scan has (a damaged
    header: opening it would build an index of millions of chunks before reading a byte)."""
    z, y, x = (int(s) for s in shape)
    if min(z, y, x) < 1:
        raise SegmentError(f"{where}: empty volume of shape {z} x {y} x {x}")
    if z > MAX_LAYERS or max(y, x) > MAX_SIDE:
        raise SegmentError(
            f"{where}: header claims a volume of {z} x {y} x {x} px (at most {MAX_LAYERS} "
            f"layers of {MAX_SIDE} px a side are read); the file is probably damaged"
        )


def detect_layout(path: Path) -> str | None:
    """Name the layout at ``path`` from names alone, or None when it is not a volume we read."""
    path = Path(path)
    if _is_zarr(path):
        return "zarr"
    if path.is_file():
        return "multipage-tiff" if path.suffix.lower() in TIFF_SUFFIXES else None
    if not path.is_dir():
        return None
    if (path / "layers").is_dir() and _layer_files(path / "layers"):
        return "scroll-segment"
    if (path / "surface_volume").is_dir() and _layer_files(path / "surface_volume"):
        return "kaggle-fragment"
    if _layer_files(path):
        return "layer-folder"
    return None


def _is_zarr(path: Path) -> bool:
    if path.suffix.lower() == ".zarr" and path.is_dir():
        return True
    return path.is_dir() and any((path / n).exists() for n in (".zarray", ".zgroup", "zarr.json"))


def _layer_files(folder: Path) -> dict[int, Path]:
    found: dict[int, Path] = {}
    for entry in folder.iterdir():
        m = _LAYER_NAME.match(entry.name)
        if m and entry.is_file():
            found[int(m.group(1))] = entry
    return found


def _open_layers(path: Path, layout: str) -> dict[str, Any]:
    folder = {"scroll-segment": path / "layers", "kaggle-fragment": path / "surface_volume"}.get(
        layout, path
    )
    numbered = _layer_files(folder)
    first, last = min(numbered), max(numbered)
    missing = [n for n in range(first, last + 1) if n not in numbered]
    if missing:
        shown = ", ".join(str(n) for n in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise SegmentError(
            f"{folder}: layer files are not consecutive: layers {shown} missing "
            f"between {numbered[first].name} and {numbered[last].name}"
        )
    files = [numbered[n] for n in range(first, last + 1)]
    layers = []
    for f in files:
        pages = inspect_tiff(f)
        layers.append(pages[0])
        _check_same(layers[0], pages[0])
    voxel = {"scroll-segment": SCROLL_VOXEL_UM, "kaggle-fragment": FRAGMENT_VOXEL_UM}.get(layout)
    segment_id = path.name if layout != "layer-folder" else _folder_id(path)
    return {
        "source": TiffLayers(layers),
        "layer_files": tuple(files),
        "first_layer": first,
        "segment_id": segment_id,
        "voxel_size_um": voxel,
    }


def _folder_id(path: Path) -> str:
    return path.parent.name if path.name in ("layers", "surface_volume") else path.name


def _check_same(reference: Any, info: Any) -> None:
    if info.shape != reference.shape:
        raise SegmentError(
            f"{info.path}: layer shape {info.shape[0]} x {info.shape[1]} differs from "
            f"{reference.path.name}'s {reference.shape[0]} x {reference.shape[1]}"
        )
    if info.dtype != reference.dtype:
        raise SegmentError(
            f"{info.path}: layer dtype {info.dtype} differs from {reference.path.name}'s "
            f"{reference.dtype}"
        )


def _open_multipage(path: Path, layout: str) -> dict[str, Any]:
    pages = inspect_tiff(path)
    if len(pages) < 2:
        raise SegmentError(f"{path}: a single 2-D image, not a volume (expected several pages)")
    for page in pages[1:]:
        _check_same(pages[0], page)
    return {
        "source": TiffLayers(pages),
        "layer_files": (path,),
        "segment_id": path.name.split(".")[0],
    }


def _open_zarr(path: Path, layout: str) -> dict[str, Any]:
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:  # zarr raises several types for unreadable metadata
        raise SegmentError(f"{path}: not a readable zarr store ({_first_line(exc)})") from None
    array_path, voxel = "", None
    if not hasattr(node, "shape"):
        array_path, voxel = _ome_full_resolution(node, path)
        try:
            node = node[array_path]
        except Exception as exc:  # missing, or metadata that zarr cannot parse
            raise SegmentError(
                f"{path}: no readable array {array_path!r} ({_first_line(exc)})"
            ) from None
        if not hasattr(node, "shape"):
            raise SegmentError(f"{path}: {array_path!r} is a group, not an array")
    shape = tuple(int(s) for s in node.shape)
    leading = tuple(0 for s in shape[:-3] if s == 1)
    if len(shape) - len(leading) != 3:
        raise SegmentError(f"{path}: zarr array of shape {shape}; expected (Z, Y, X)")
    try:
        dtype = np.dtype(node.dtype)
    except TypeError:
        raise SegmentError(
            f"{path}: zarr array of dtype {node.dtype}; expected uint8 or uint16"
        ) from None
    return {
        "source": ZarrVolume(path, array_path, leading, shape[-3:], dtype),
        "segment_id": path.name.removesuffix(".zarr").removesuffix(".ome"),
        "voxel_size_um": voxel,
    }


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _ome_full_resolution(group: Any, path: Path) -> tuple[str, float | None]:
    """The full-resolution array of an OME-Zarr group, and its voxel size when the metadata
    gives a usable one (a nonsense scale or unit means "unknown", not an error)."""
    attrs = dict(group.attrs)
    ome = attrs.get("ome")
    multiscales = attrs.get("multiscales") or (
        ome.get("multiscales") if isinstance(ome, dict) else None
    )
    if not multiscales:
        arrays = sorted(name for name, _ in group.arrays())
        if not arrays:
            raise SegmentError(f"{path}: zarr group with no arrays and no OME multiscales")
        return arrays[0], None
    first = multiscales[0] if isinstance(multiscales, list) else None
    datasets = first.get("datasets") if isinstance(first, dict) else None
    dataset = datasets[0] if isinstance(datasets, list) and datasets else None
    if not isinstance(dataset, dict) or not isinstance(dataset.get("path"), str):
        raise SegmentError(
            f"{path}: OME-Zarr metadata without a usable multiscales[0].datasets[0].path"
        )
    return dataset["path"], _ome_voxel(dataset, first.get("axes"))


def _ome_voxel(dataset: dict[str, Any], axes: Any) -> float | None:
    voxel = None
    transforms = dataset.get("coordinateTransformations")
    for transform in transforms if isinstance(transforms, list) else []:
        if not isinstance(transform, dict):
            continue
        scale = transform.get("scale")
        if transform.get("type") == "scale" and isinstance(scale, list) and scale:
            value = scale[-1]
            usable = isinstance(value, int | float) and not isinstance(value, bool)
            voxel = float(value) if usable and math.isfinite(value) and value > 0 else None
    last = axes[-1] if isinstance(axes, list) and axes else None
    unit = last.get("unit") if isinstance(last, dict) else None
    if voxel is not None and unit not in ("micrometer", None):
        voxel = None  # only micrometres compare with the known scan resolutions
    return voxel


def _find_companions(folder: Path, segment_id: str) -> dict[str, Any]:
    def first_existing(*names: str) -> Path | None:
        return next((folder / n for n in names if (folder / n).is_file()), None)

    mask = first_existing(f"{segment_id}_mask.png", "mask.png", f"{segment_id}_mask.tif")
    ink = first_existing(
        f"{segment_id}_inklabels.png", "inklabels.png", f"{segment_id}_inklabels.tif"
    )
    others = {}
    for f in sorted(folder.glob("*labels*.png")) + sorted(folder.glob("*labels*.tif")):
        if f != ink and "inklabels" not in f.name:
            name = f.name.split(".")[0].removeprefix(f"{segment_id}_")
            others[name] = f
    return {"mask_path": mask, "inklabels_path": ink, "other_labels": others}


def _check_companion_shapes(segment: Segment) -> None:
    for f in [segment.mask_path, segment.inklabels_path, *segment.other_labels.values()]:
        if f is not None:
            labels_io.check_shape(image_shape(f), segment.shape[1:], f)


def _meta_voxel_size(folder: Path) -> float | None:
    meta = folder / "meta.json"
    if not meta.is_file():
        return None
    try:
        value = json.loads(meta.read_text()).get("voxel_size_um")
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) else None


def _fingerprint(path: Path, files: tuple[Path, ...], *extra: str) -> str:
    """Hash of the path and each layer file's name, size and mtime (headers only)."""
    h = hashlib.sha1(str(path.resolve()).encode())
    for f in files or (path,):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    for item in extra:
        h.update(item.encode())
    return h.hexdigest()[:16]
