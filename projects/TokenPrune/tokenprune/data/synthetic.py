"""A deterministic synthetic instance-segmentation dataset of coloured shapes, in COCO format.

Each image shows 1-5 filled shapes (about 5% of the images show none) on a textured
background. Shapes drawn later occlude earlier ones, and every annotation describes the
*visible* part of its object: a fully visible polygonal shape is stored as a polygon, any
other mask (circles, occluded shapes) as compressed RLE. The pixels drawn for an object are
exactly the pixels its segmentation decodes to with pycocotools, and ``area`` / ``bbox`` are
computed from that same mask. Besides the COCO fields, each annotation records ``"shape"``
(class name) and ``"color"`` (colour name), from which task-oriented relevance can be derived.

Two families are registered: ``synthetic_shapes_*``, where each class has its own colour, and
``synthetic_mixcolor_*``, where an object's colour is drawn independently of its class, so
that the class is in the outline and size only (a task the deeper ViT blocks matter for).
"""

import contextlib
import io
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from PIL import Image, ImageDraw

from ..fileio import atomic_write_bytes, atomic_write_json

__all__ = [
    "MIXED_COLOR_SPLITS",
    "SHAPE_CLASSES",
    "SYNTHETIC_SPLITS",
    "default_data_root",
    "generate_synthetic_shapes",
    "register_synthetic_shapes",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _ShapeClass:
    name: str
    color_name: str
    rgb: Tuple[int, int, int]
    radius: Tuple[float, float]  # range of the circumradius, as a fraction of the image size


_SHAPES = (
    _ShapeClass("circle", "red", (220, 40, 40), (0.04, 0.08)),
    _ShapeClass("square", "green", (40, 170, 60), (0.07, 0.11)),
    _ShapeClass("triangle", "blue", (40, 80, 220), (0.09, 0.14)),
    _ShapeClass("star", "yellow", (235, 205, 30), (0.11, 0.16)),
)

SHAPE_CLASSES: Tuple[str, ...] = tuple(s.name for s in _SHAPES)
"""Category names in id order; the json gives them ids 1..len(SHAPE_CLASSES)."""

SYNTHETIC_SPLITS: Dict[str, Tuple[str, int, int]] = {
    "synthetic_shapes_train": ("train", 400, 0),
    "synthetic_shapes_val": ("val", 64, 1),
    "synthetic_shapes_minival": ("minival", 8, 2),  # quick evaluations in tests
}
"""Registered dataset name -> (split folder, number of images, seed); a colour per class."""

MIXED_COLOR_SPLITS: Dict[str, Tuple[str, int, int]] = {
    "synthetic_mixcolor_train": ("train", 400, 10),
    "synthetic_mixcolor_val": ("val", 128, 11),
    "synthetic_mixcolor_minival": ("minival", 8, 12),
}
"""As :data:`SYNTHETIC_SPLITS`, for shapes coloured independently of their class."""

_FORMAT_VERSION = 1  # bump when the rendered images or the json change for the same parameters
_EMPTY_FRACTION = 0.05
_MAX_OBJECTS = 5
_MIN_VISIBLE_FRACTION = 0.6  # an occluded object keeps at least this fraction of its pixels
_PLACEMENT_TRIES = 20
_COLOR_JITTER = 25  # per RGB channel, uniform in [-J, J]
_STAR_POINTS = 5


def default_data_root() -> str:
    """The folder for generated data: ``$TOKENPRUNE_DATA`` or ``~/.cache/tokenprune/data``."""
    return os.path.expanduser(os.environ.get("TOKENPRUNE_DATA") or "~/.cache/tokenprune/data")


@dataclass
class _Object:
    shape: _ShapeClass
    mask: np.ndarray  # (H, W) bool, the full shape
    visible: np.ndarray  # (H, W) bool, the part not covered by later shapes
    polygon: Optional[List[float]]  # [x0, y0, x1, y1, ...] in pixels, None for circles
    rgb: np.ndarray  # (3,) float
    color_name: str


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Bilinearly resize a (g, g, C) grid, corners aligned, to (size, size, C)."""
    g = grid.shape[0]
    t = np.linspace(0.0, g - 1, size)
    i0 = np.clip(np.floor(t).astype(np.int64), 0, g - 2)
    f = (t - i0)[:, None, None]
    rows = grid[i0] * (1 - f) + grid[i0 + 1] * f  # (size, g, C)
    f = f.transpose(1, 0, 2)
    return rows[:, i0] * (1 - f) + rows[:, i0 + 1] * f


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A (size, size, 3) float32 background: colour gradient, smooth noise, faint lines/blobs."""
    base = _upsample(rng.uniform(50, 200, (2, 2, 3)), size)
    base += _upsample(rng.normal(0, 15, (6, 6, 3)), size)
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).convert("RGBA")
    overlay = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    for _ in range(int(rng.integers(2, 6))):
        xy = [float(v) for v in rng.uniform(0, size, 4)]
        fill = tuple(int(v) for v in rng.integers(0, 256, 3)) + (int(rng.integers(25, 60)),)
        draw.line(xy, fill=fill, width=int(rng.integers(1, max(2, size // 85))))
    for _ in range(int(rng.integers(1, 4))):
        x0, y0 = rng.uniform(-0.1 * size, 0.9 * size, 2)
        w, h = rng.uniform(0.1 * size, 0.4 * size, 2)
        fill = tuple(int(v) for v in rng.integers(0, 256, 3)) + (int(rng.integers(20, 45)),)
        draw.ellipse([float(x0), float(y0), float(x0 + w), float(y0 + h)], fill=fill)
    image = Image.alpha_composite(image, overlay).convert("RGB")
    return np.asarray(image, dtype=np.float32).copy()


def _polygon(rng: np.random.Generator, name: str, cx: float, cy: float, r: float) -> List[float]:
    """Vertices of a square, triangle or star of circumradius ``r`` px, rounded to 0.01 px."""
    angle = rng.uniform(0, 2 * math.pi)
    if name == "square":
        angles = angle + np.arange(4) * (math.pi / 2)
        radii = np.full(4, r)
    elif name == "triangle":
        angles = angle + np.arange(3) * (2 * math.pi / 3) + rng.uniform(-0.15, 0.15, 3)
        radii = r * rng.uniform(0.85, 1.0, 3)
    elif name == "star":
        angles = angle + np.arange(2 * _STAR_POINTS) * (math.pi / _STAR_POINTS)
        radii = np.tile([r, r * rng.uniform(0.4, 0.5)], _STAR_POINTS)
    else:
        raise ValueError(f"Not a polygonal shape: {name}")
    xy = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
    return [round(float(v), 2) for v in xy.ravel()]


def _polygon_mask(polygon: List[float], size: int) -> np.ndarray:
    """Rasterize a polygon exactly as pycocotools decodes it: (size, size) bool."""
    rle = mask_util.merge(mask_util.frPyObjects([polygon], size, size))
    return mask_util.decode(rle).astype(bool)


def _sample_object(
    rng: np.random.Generator, size: int, grid: Tuple[np.ndarray, np.ndarray], class_colors: bool
) -> _Object:
    shape = _SHAPES[int(rng.integers(len(_SHAPES)))]
    paint = shape if class_colors else _SHAPES[int(rng.integers(len(_SHAPES)))]
    r = rng.uniform(*shape.radius) * size
    cx, cy = (float(v) for v in rng.uniform(r + 1, size - r - 1, 2))
    if shape.name == "circle":
        xs, ys = grid
        mask = (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r
        polygon = None
    else:
        polygon = _polygon(rng, shape.name, cx, cy, r)
        mask = _polygon_mask(polygon, size)
    jitter = rng.integers(-_COLOR_JITTER, _COLOR_JITTER + 1, 3)
    rgb = np.clip(np.asarray(paint.rgb) + jitter, 0, 255).astype(np.float32)
    return _Object(shape, mask, mask.copy(), polygon, rgb, paint.color_name)


def _place_objects(
    rng: np.random.Generator, size: int, num_objects: int, grid: Tuple[np.ndarray, np.ndarray],
    class_colors: bool,
) -> List[_Object]:
    """Sample up to ``num_objects`` shapes in drawing order, each occluding the earlier ones
    by at most ``1 - _MIN_VISIBLE_FRACTION`` of their area."""
    objects: List[_Object] = []
    for _ in range(num_objects):
        for _ in range(_PLACEMENT_TRIES):
            new = _sample_object(rng, size, grid, class_colors)
            if all(
                np.count_nonzero(o.visible & ~new.mask) >= _MIN_VISIBLE_FRACTION * o.mask.sum()
                for o in objects
            ):
                break
        else:
            break
        for o in objects:
            o.visible &= ~new.mask
        objects.append(new)
    return objects


def _render(
    rng: np.random.Generator, size: int, num_objects: int, class_colors: bool
) -> Tuple[np.ndarray, List[_Object]]:
    """Returns a (size, size, 3) uint8 RGB image and its objects in drawing order."""
    canvas = _background(rng, size)
    xs, ys = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5)  # pixel centres
    objects = _place_objects(rng, size, num_objects, (xs, ys), class_colors)
    for o in objects:
        # a soft linear shading across each shape, so that fills are not perfectly flat
        phi = rng.uniform(0, 2 * math.pi)
        ramp = (xs[o.mask] * math.cos(phi) + ys[o.mask] * math.sin(phi)) / size
        shade = 1.0 + 0.6 * (ramp - ramp.mean())
        canvas[o.mask] = o.rgb[None, :] * shade[:, None]
    canvas += rng.normal(0, 4, canvas.shape)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), objects


def _mask_annotation(visible: np.ndarray, polygon: Optional[List[float]]) -> Dict[str, Any]:
    """COCO segmentation, area and bbox of a visible (H, W) bool mask: ``[polygon]`` when
    given (the caller passes it only when it decodes to exactly ``visible``), else RLE."""
    if polygon is not None:
        segmentation: Any = [polygon]
    else:
        rle = mask_util.encode(np.asfortranarray(visible.astype(np.uint8)))
        segmentation = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()}
    cols = np.flatnonzero(visible.any(axis=0))
    rows = np.flatnonzero(visible.any(axis=1))
    x0, y0 = int(cols[0]), int(rows[0])
    bbox = [float(x0), float(y0), float(cols[-1] + 1 - x0), float(rows[-1] + 1 - y0)]
    return {
        "segmentation": segmentation,
        "area": float(np.count_nonzero(visible)),
        "bbox": bbox,
        "iscrowd": 0,
    }


def _annotation(o: _Object) -> Dict[str, Any]:
    """COCO fields of an object's visible mask (category and ids are added by the caller)."""
    whole = o.polygon is not None and np.array_equal(o.visible, o.mask)
    return {
        **_mask_annotation(o.visible, o.polygon if whole else None),
        "shape": o.shape.name,
        "color": o.color_name,
    }


def _save_image(array: np.ndarray, path: str) -> None:
    """Write an image atomically; the format follows the extension (PNG or JPEG)."""
    buf = io.BytesIO()
    image = Image.fromarray(array)
    if path.lower().endswith((".jpg", ".jpeg")):
        image.save(buf, format="JPEG", quality=90)
    else:
        image.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def _is_generated(
    stamp_file: str, params: Dict[str, Any], json_file: str, image_dir: str, file_names: List[str]
) -> bool:
    try:
        with open(stamp_file) as f:
            if json.load(f) != params:
                return False
    except (OSError, ValueError):
        return False
    return os.path.isfile(json_file) and all(
        os.path.isfile(os.path.join(image_dir, n)) for n in file_names
    )


def _render_images(image_dir: str, file_names: List[str], seed: int, image_size: int,
                   class_colors: bool, category_of: Dict[str, int]) -> Tuple[list, list]:
    """Render and save every image; returns the COCO (images, annotations) lists."""
    num_images = len(file_names)
    rng = np.random.default_rng([seed])
    num_empty = max(0, min(max(1, round(_EMPTY_FRACTION * num_images)), num_images - 1))
    empty_ids = {int(i) + 1 for i in rng.choice(num_images, size=num_empty, replace=False)}
    images, annotations = [], []
    for image_id, file_name in enumerate(file_names, start=1):
        image_rng = np.random.default_rng([seed, image_id])
        num_objects = 0 if image_id in empty_ids else int(image_rng.integers(1, _MAX_OBJECTS + 1))
        pixels, objects = _render(image_rng, image_size, num_objects, class_colors)
        _save_image(pixels, os.path.join(image_dir, file_name))
        images.append(
            {"id": image_id, "file_name": file_name, "width": image_size, "height": image_size}
        )
        for o in objects:
            ann = {"id": len(annotations) + 1, "image_id": image_id}
            ann["category_id"] = category_of[o.shape.name]
            ann.update(_annotation(o))
            annotations.append(ann)
    return images, annotations


def generate_synthetic_shapes(
    json_file: str,
    image_dir: str,
    num_images: int,
    seed: int,
    image_size: int = 256,
    *,
    file_name_format: str = "{:06d}.png",
    categories: Optional[Sequence[Dict[str, Any]]] = None,
    shape_category_ids: Optional[Sequence[int]] = None,
    class_colors: bool = True,
) -> str:
    """
    Write ``num_images`` images of ``image_size`` x ``image_size`` pixels into ``image_dir``
    and their COCO instance annotations into ``json_file``. The same arguments give
    byte-identical files; if they were already generated with the same arguments, nothing
    is rewritten (a ``<json_file>.stamp`` file records the arguments).

    Args:
        file_name_format: image file name for image id i (1-based); ".jpg" writes JPEG.
        categories: the json's "categories" list; default: SHAPE_CLASSES with ids 1..K.
        shape_category_ids: the json category id of each entry of SHAPE_CLASSES; must be
            given together with ``categories``.
        class_colors: paint each shape in its class's colour; if False, in the colour of a
            class drawn independently (the annotation's "color" names the colour used).

    Returns:
        ``json_file``.
    """
    if (categories is None) != (shape_category_ids is None):
        raise ValueError("categories and shape_category_ids must be given together")
    if categories is None:
        categories = [
            {"id": i + 1, "name": name, "supercategory": "shape"}
            for i, name in enumerate(SHAPE_CLASSES)
        ]
        shape_category_ids = list(range(1, len(SHAPE_CLASSES) + 1))
    category_of = dict(zip(SHAPE_CLASSES, (int(i) for i in shape_category_ids)))
    params = {
        "version": _FORMAT_VERSION,
        "num_images": int(num_images),
        "seed": int(seed),
        "image_size": int(image_size),
        "file_name_format": file_name_format,
        "categories": list(categories),
        "shape_category_ids": list(category_of.values()),
        "class_colors": bool(class_colors),
    }
    file_names = [file_name_format.format(i) for i in range(1, num_images + 1)]
    info = {"description": "TokenPrune synthetic shapes", "version": str(_FORMAT_VERSION),
            "seed": int(seed)}
    return _generate_once(
        json_file, image_dir, params, file_names, info, list(categories),
        lambda: _render_images(image_dir, file_names, seed, image_size, class_colors,
                               category_of),
    )


def _generate_once(
    json_file: str, image_dir: str, params: Dict[str, Any], file_names: List[str],
    info: Dict[str, Any], categories: List[Dict[str, Any]],
    render: Callable[[], Tuple[list, list]],
) -> str:
    """Write a generated COCO dataset unless its ``<json_file>.stamp`` already records
    ``params`` and every file exists. ``render()`` saves the images into ``image_dir`` and
    returns the json's (images, annotations) lists. Returns ``json_file``."""
    stamp_file = json_file + ".stamp"
    if _is_generated(stamp_file, params, json_file, image_dir, file_names):
        return json_file

    start = time.perf_counter()
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(os.path.dirname(os.path.abspath(json_file)), exist_ok=True)
    with contextlib.suppress(FileNotFoundError):  # another process generating the same set
        os.remove(stamp_file)

    images, annotations = render()
    dataset = {
        "info": info,
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    atomic_write_json(json_file, dataset, compact=True)
    atomic_write_json(stamp_file, params, compact=True)
    logger.info(
        f"Generated {len(file_names)} synthetic images ({len(annotations)} objects) in "
        f"{time.perf_counter() - start:.1f} s: {json_file}"
    )
    return json_file


def _load_synthetic(name: str) -> List[Dict[str, Any]]:
    """DatasetCatalog function: generate the dataset's files on first use, then load them."""
    meta = MetadataCatalog.get(name)
    generate_synthetic_shapes(meta.json_file, meta.image_root, **meta.synthetic_params)
    return load_coco_json(
        meta.json_file, meta.image_root, name, extra_annotation_keys=["shape", "color"]
    )


def register_synthetic_shapes(root: Optional[str] = None) -> None:
    """
    Register the datasets of ``SYNTHETIC_SPLITS`` under ``<root>/synthetic_shapes`` and of
    ``MIXED_COLOR_SPLITS`` under ``<root>/synthetic_mixcolor`` (default root:
    :func:`default_data_root`). Nothing is generated here: the files are made on the first
    ``DatasetCatalog.get`` or ``prepare_dataset``. Names that are already registered are left
    as they are. Dataset dicts carry each annotation's "shape" and "color".
    Metadata: thing_classes, thing_dataset_id_to_contiguous_id (json ids 1..K), thing_colors,
    json_file, image_root, evaluator_type="coco", generated_on_load=True and
    synthetic_params (the generator's arguments).
    """
    root = root or default_data_root()
    for folder, splits, class_colors in (("synthetic_shapes", SYNTHETIC_SPLITS, True),
                                         ("synthetic_mixcolor", MIXED_COLOR_SPLITS, False)):
        for name, (split, num_images, seed) in splits.items():
            _register_generated(
                name, _load_synthetic, os.path.join(root, folder), split, SHAPE_CLASSES,
                [list(s.rgb) for s in _SHAPES],
                {"num_images": num_images, "seed": seed, "image_size": 256,
                 "class_colors": class_colors})


def _register_generated(name: str, load: Callable[[str], List[Dict[str, Any]]], base: str,
                        split: str, classes: Sequence[str], colors: List[List[int]],
                        params: Dict[str, Any]) -> None:
    """Register the generated COCO set ``name`` (``<base>/<split>/`` images,
    ``<base>/annotations/<split>.json``) lazily: ``load(name)`` generates and loads it on
    first use; json category ids 1..K. A name already registered is left as it is."""
    if name in DatasetCatalog:
        return
    DatasetCatalog.register(name, lambda: load(name))
    MetadataCatalog.get(name).set(
        thing_classes=list(classes),
        # the json's ids (generator default 1..K), known before it is loaded
        thing_dataset_id_to_contiguous_id={k + 1: k for k in range(len(classes))},
        thing_colors=colors,
        json_file=os.path.join(base, "annotations", f"{split}.json"),
        image_root=os.path.join(base, split),
        evaluator_type="coco",
        generated_on_load=True,
        synthetic_params=params,
    )
