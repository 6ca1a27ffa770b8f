"""A generated dataset for the ablation study of SViT token pruning, in COCO format.

The shapes datasets (:mod:`.synthetic`) cannot show SViT's findings: their objects are
small (10-41 px), few (1-5 per image, about 9% of the tokens) and their colour or saliency
tells the class. Each property of these scenes gives one finding room to show:

* Classes are shape x texture ({circle, square, triangle} x {striped, dotted}: "striped
  circle", ..., ids 1..6), and an object's colour is drawn independently of its class. A
  16 px patch in the first blocks sees a colour and a bit of texture, not the class: the
  class needs the outline and the texture together (deeper blocks), so early pruning
  decisions can be wrong, and reactivation or a better gate have something to fix
  (findings 2 and 4).
* The number of objects per image is spread wide: exactly a third of the images ("sparse")
  has 0-2 objects, a third ("crowded") 12-25, the rest ("medium") 3-11 (the json image
  entry's "density"). The share of 16 px tokens that touch an object is about 2% on a
  sparse image and about 75% on a crowded one (medians), so a fixed token budget binds on
  crowded images and is wasted on sparse ones (finding 3, a dynamic keep rate per image).
* Object sizes (circumdiameter) are log-uniform from 14 px to 0.7 x the image size, so that
  COCO's small (area < 32^2), medium and large (> 96^2) sizes are all populated (51%, 42%
  and 7% of the objects of the val split): the interiors of large objects are what a model
  that discards pruned tokens loses (finding 1).
* Clutter: what lies between the objects is not plain. Over the textured background of
  :mod:`.synthetic`, 1-5 unannotated distractors (elongated ellipses, too thin to pass for
  a circle) carry the same stripe and dot textures in random colours; they are drawn before
  the objects, which occlude them. About 10% of the objects are camouflaged: their colour is
  the mean colour of what they cover, jittered, and their texture has less contrast, so
  saliency alone misses them. Cheap early decisions can be wrong both ways.

After the pilot (docs/study.md) the textures became coarser and of higher contrast, the
irregular-blob distractors were dropped (some looked like the squares and triangles they
were not), occlusion was limited to 20% of an object and camouflage to 10%.

Objects are placed largest first; an object may hide at most 20% of any earlier one, and
placement gives up on an object after a number of tries (92% of the crowded images of the
val split keep 12 or more). Every annotation describes the object's visible pixels exactly
(a polygon when a polygonal object is fully visible, RLE otherwise), with ``area`` and
``bbox`` from that mask, and records "shape", "texture", "color" (the base [r, g, b]) and "camouflaged".

The study's shapes and densities are :data:`STUDY_LAYOUT`; other scene datasets (the task
scenes of :mod:`.synthetic_task_scenes`) pass their own :class:`SceneLayout` to the same
generator.
"""

import json
import math
import os
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.data.datasets import load_coco_json
from PIL import Image, ImageDraw

from .synthetic import (
    _background,
    _generate_once,
    _mask_annotation,
    _polygon,
    _polygon_mask,
    _register_generated,
    _save_image,
    default_data_root,
)

__all__ = [
    "STUDY_CLASSES",
    "STUDY_LAYOUT",
    "STUDY_SPLITS",
    "SceneLayout",
    "generate_study_scenes",
    "register_synthetic_study",
]

_TEXTURES = ("striped", "dotted")


@dataclass(frozen=True)
class SceneLayout:
    """What a scene dataset built on this generator chooses: its shapes (any of
    :func:`.synthetic._polygon`'s and "circle"), its density buckets ((name, min, max
    objects), equal shares of the images) and the fewest objects an image may keep (an image
    whose placement kept fewer is rendered again from where its random stream stands)."""

    shapes: Tuple[str, ...]
    densities: Tuple[Tuple[str, int, int], ...]
    min_objects: int
    description: str

    @property
    def classes(self) -> Tuple[str, ...]:
        """Category names in id order: texture x shape, e.g. "striped circle"; ids 1..K."""
        return tuple(f"{t} {s}" for s in self.shapes for t in _TEXTURES)

STUDY_SPLITS: Dict[str, Tuple[str, int, int]] = {
    # the reported run
    "synthetic_study_train": ("train", 800, 40),
    "synthetic_study_val": ("val", 300, 41),
    "synthetic_study_minival": ("minival", 8, 42),  # quick evaluations in tests
    # the pilot that fixes the recipe: its own data seed and its own validation images
    "synthetic_study_pilot_train": ("pilot_train", 800, 50),
    "synthetic_study_pilot_val": ("pilot_val", 300, 51),
}
"""Registered dataset name -> (split folder, number of images, seed)."""

_FORMAT_VERSION = 4  # bump when the rendered images or the json change for the same parameters
# (name, min, max objects): a third of the images each, so the token share of objects spans
# ~2% (sparse) to ~75% (crowded) and a fixed keep rate cannot suit every image
_DENSITIES = (("sparse", 0, 2), ("medium", 3, 11), ("crowded", 12, 25))
STUDY_LAYOUT = SceneLayout(("circle", "square", "triangle"), _DENSITIES, 0,
                           "TokenPrune synthetic study scenes")
STUDY_CLASSES: Tuple[str, ...] = STUDY_LAYOUT.classes
"""Category names in id order ("striped circle", "dotted circle", ...); json ids 1..6."""
# circumdiameter, log-uniform: from _MIN_EXTENT px to this fraction of the image size.
# COCO's "large" (visible area > 96^2) is 14% of a 256 px image: with 0.45 only circles over
# 108 px reach it and 0.3% of the objects were large (val split, format 1), with 0.6 2.3%,
# with 0.7 3.8%
_MIN_EXTENT = 14.0
_MAX_EXTENT = 0.7
_MIN_VISIBLE_FRACTION = 0.8  # an occluded object keeps at least this fraction of its pixels
_PLACEMENT_TRIES = 40  # positions tried per object (its size stays: no bias to small objects)
_CAMOUFLAGED_FRACTION = 0.1  # objects coloured like what they cover: saliency misses them
_CAMOUFLAGE_JITTER = 12  # per RGB channel, uniform in [-J, J], around the covered mean colour
_PATTERN_CONTRAST = (90.0, 140.0)  # texture colour = object colour -+ this (darker if bright)
_CAMOUFLAGE_CONTRAST = (60.0, 90.0)  # fainter textures on camouflaged objects
_STRIPE_PERIOD = (6.0, 10.0)  # px; half of each period is in the texture colour, random angle
_DOT_SPACING = (7.0, 10.0)  # px, square grid with a random phase
_DOT_RADIUS = (1.5, 2.5)  # px
_DISTRACTORS = (1, 5)  # unannotated textured ellipses per image, drawn under the objects
_NOISE = 4.0  # sd of the per-pixel Gaussian noise
# every scene constant, in the stamp: a changed constant regenerates the files even when
# _FORMAT_VERSION was not bumped (a validation set generated between an edit of these and a
# bump once had other constants than its training set)
_SCENE_CONSTANTS = dict(
    densities=_DENSITIES, min_extent=_MIN_EXTENT, max_extent=_MAX_EXTENT,
    min_visible=_MIN_VISIBLE_FRACTION, tries=_PLACEMENT_TRIES,
    camouflaged=_CAMOUFLAGED_FRACTION, camouflage_jitter=_CAMOUFLAGE_JITTER,
    contrast=_PATTERN_CONTRAST, camouflage_contrast=_CAMOUFLAGE_CONTRAST,
    stripe_period=_STRIPE_PERIOD, dot_spacing=_DOT_SPACING, dot_radius=_DOT_RADIUS,
    distractors=_DISTRACTORS, noise=_NOISE)


@dataclass
class _Piece:
    """An object placed in the image; its masks cover the box at (top, left)."""

    shape: str
    texture: str
    camouflaged: bool
    top: int
    left: int
    mask: np.ndarray  # (h, w) bool, the whole shape
    visible: np.ndarray  # (h, w) bool, the part not covered by later objects
    polygon: Optional[List[float]]  # [x0, y0, x1, y1, ...] px in the image, None for circles
    area: int  # pixels of the whole shape
    num_visible: int
    rgb: Optional[np.ndarray] = None  # (3,) int, set when drawn


def _log_extent(rng: np.random.Generator, size: int) -> float:
    """A circumdiameter in px, log-uniform in [_MIN_EXTENT, _MAX_EXTENT * size]."""
    return math.exp(rng.uniform(math.log(_MIN_EXTENT), math.log(_MAX_EXTENT * size)))


def _tight_box(mask: np.ndarray) -> Tuple[int, int, int, int]:
    """(top, bottom, left, right), exclusive ends, of the True pixels of a 2D mask."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _shape_mask(
    rng: np.random.Generator, shape: str, extent: float, size: int
) -> Tuple[int, int, np.ndarray, Optional[List[float]]]:
    """A shape of circumdiameter ``extent`` px at a random position fully inside the image:
    (top, left, (h, w) bool mask of its box, polygon or None)."""
    r = extent / 2
    cx, cy = (float(v) for v in rng.uniform(r + 1, size - r - 1, 2))
    if shape == "circle":
        top, left = max(0, math.floor(cy - r)), max(0, math.floor(cx - r))
        ys = np.arange(top, min(size, math.ceil(cy + r)))[:, None] + 0.5  # pixel centres
        xs = np.arange(left, min(size, math.ceil(cx + r)))[None, :] + 0.5
        return top, left, (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r, None
    polygon = _polygon(rng, shape, cx, cy, r)
    full = _polygon_mask(polygon, size)
    top, bottom, left, right = _tight_box(full)
    return top, left, full[top:bottom, left:right], polygon


def _overlap(a: _Piece, b: _Piece) -> Optional[Tuple[slice, slice, slice, slice]]:
    """Slices (a rows, a cols, b rows, b cols) of the intersection of two boxes, or None."""
    top, left = max(a.top, b.top), max(a.left, b.left)
    bottom = min(a.top + a.mask.shape[0], b.top + b.mask.shape[0])
    right = min(a.left + a.mask.shape[1], b.left + b.mask.shape[1])
    if bottom <= top or right <= left:
        return None
    return (slice(top - a.top, bottom - a.top), slice(left - a.left, right - a.left),
            slice(top - b.top, bottom - b.top), slice(left - b.left, right - b.left))


def _place_pieces(
    rng: np.random.Generator, size: int, num_objects: int, shapes: Tuple[str, ...]
) -> List[_Piece]:
    """Sample ``num_objects`` objects of ``shapes`` and place them largest first, each
    hiding at most ``1 - _MIN_VISIBLE_FRACTION`` of every earlier one; an object that finds
    no position in ``_PLACEMENT_TRIES`` tries is left out. Returns the placed objects in
    drawing order."""
    specs = [
        (shapes[int(rng.integers(len(shapes)))], _TEXTURES[int(rng.integers(len(_TEXTURES)))],
         _log_extent(rng, size), bool(rng.random() < _CAMOUFLAGED_FRACTION))
        for _ in range(num_objects)
    ]
    specs.sort(key=lambda s: -s[2])  # stable: ties keep their sampling order
    pieces: List[_Piece] = []
    for shape, texture, extent, camouflaged in specs:
        for _ in range(_PLACEMENT_TRIES):
            top, left, mask, polygon = _shape_mask(rng, shape, extent, size)
            area = int(np.count_nonzero(mask))
            new = _Piece(shape, texture, camouflaged, top, left, mask, mask.copy(), polygon,
                         area, area)
            hidden = []  # (earlier piece, its rows, its cols, pixels the new one hides)
            for o in pieces:
                ov = _overlap(o, new)
                if ov is None:
                    continue
                covered = int(np.count_nonzero(o.visible[ov[0], ov[1]] & mask[ov[2], ov[3]]))
                if o.num_visible - covered < _MIN_VISIBLE_FRACTION * o.area:
                    break
                hidden.append((o, ov, covered))
            else:
                for o, ov, covered in hidden:
                    o.visible[ov[0], ov[1]] &= ~mask[ov[2], ov[3]]
                    o.num_visible -= covered
                pieces.append(new)
                break
    return pieces


def _texture(
    rng: np.random.Generator, texture: str, top: int, left: int, shape: Tuple[int, int]
) -> np.ndarray:
    """(h, w) bool: the pixels of the box at (top, left) in the texture's second colour."""
    ys = np.arange(top, top + shape[0])[:, None] + 0.5
    xs = np.arange(left, left + shape[1])[None, :] + 0.5
    if texture == "striped":
        angle, period, phase = rng.uniform(0, math.pi), rng.uniform(*_STRIPE_PERIOD), rng.random()
        t = (xs * math.cos(angle) + ys * math.sin(angle)) / period + phase
        return t - np.floor(t) < 0.5
    spacing, radius = rng.uniform(*_DOT_SPACING), rng.uniform(*_DOT_RADIUS)
    oy, ox = rng.uniform(0, spacing, 2)
    dy, dx = (ys - oy) % spacing, (xs - ox) % spacing
    dy, dx = np.minimum(dy, spacing - dy), np.minimum(dx, spacing - dx)
    return dy * dy + dx * dx <= radius * radius


def _paint(
    rng: np.random.Generator, canvas: np.ndarray, top: int, left: int, mask: np.ndarray,
    texture: str, rgb: np.ndarray, contrast: Tuple[float, float],
) -> None:
    """Fill ``mask`` (h, w bool, box at top, left) of the (H, W, 3) float canvas with ``rgb``
    (3,) and its texture in a darker (bright ``rgb``) or lighter shade."""
    rgb = np.asarray(rgb, dtype=np.float64)
    sign = -1.0 if rgb.mean() > 127.5 else 1.0
    shade = np.clip(rgb + sign * rng.uniform(*contrast), 0, 255)
    pattern = _texture(rng, texture, top, left, mask.shape)[mask]
    region = canvas[top:top + mask.shape[0], left:left + mask.shape[1]]
    region[mask] = np.where(pattern[:, None], shade[None, :], rgb[None, :])


def _draw_distractors(rng: np.random.Generator, canvas: np.ndarray) -> None:
    """Paint a few textured, unannotated elongated ellipses on the canvas (too elongated to
    pass for a circle; irregular polygons were dropped after the pilot: some looked like the
    squares and triangles they were not)."""
    size = canvas.shape[0]
    for _ in range(int(rng.integers(_DISTRACTORS[0], _DISTRACTORS[1] + 1))):
        r = _log_extent(rng, size) / 2
        cx, cy = rng.uniform(0, size, 2)
        angle = rng.uniform(0, 2 * math.pi)
        t = np.linspace(0, 2 * math.pi, 32, endpoint=False)
        u, v = r * np.cos(t), r * rng.uniform(0.2, 0.4) * np.sin(t)
        xs = cx + u * math.cos(angle) - v * math.sin(angle)
        ys = cy + u * math.sin(angle) + v * math.cos(angle)
        outline = Image.new("L", (size, size), 0)
        ImageDraw.Draw(outline).polygon([(float(x), float(y)) for x, y in zip(xs, ys)], fill=1)
        mask = np.asarray(outline, dtype=bool)
        texture = _TEXTURES[int(rng.integers(len(_TEXTURES)))]
        rgb = rng.integers(0, 256, 3)
        if mask.any():
            top, bottom, left, right = _tight_box(mask)
            _paint(rng, canvas, top, left, mask[top:bottom, left:right], texture, rgb,
                   _PATTERN_CONTRAST)


def _render_scene(
    rng: np.random.Generator, size: int, num_objects: int, shapes: Tuple[str, ...]
) -> Tuple[np.ndarray, List[_Piece]]:
    """Returns a (size, size, 3) uint8 RGB image and its objects in drawing order."""
    canvas = _background(rng, size).astype(np.float64)
    _draw_distractors(rng, canvas)
    pieces = _place_pieces(rng, size, num_objects, shapes)
    for p in pieces:
        region = canvas[p.top:p.top + p.mask.shape[0], p.left:p.left + p.mask.shape[1]]
        if p.camouflaged:
            jitter = rng.integers(-_CAMOUFLAGE_JITTER, _CAMOUFLAGE_JITTER + 1, 3)
            p.rgb = np.clip(np.rint(region[p.mask].mean(axis=0)) + jitter, 0, 255).astype(int)
        else:
            p.rgb = rng.integers(0, 256, 3)
        contrast = _CAMOUFLAGE_CONTRAST if p.camouflaged else _PATTERN_CONTRAST
        _paint(rng, canvas, p.top, p.left, p.mask, p.texture, p.rgb, contrast)
    canvas += rng.normal(0, _NOISE, canvas.shape)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), pieces


def _annotation(p: _Piece, size: int) -> Dict[str, Any]:
    """COCO fields of a placed object's visible mask (ids and category added by the caller)."""
    visible = np.zeros((size, size), dtype=bool)
    visible[p.top:p.top + p.mask.shape[0], p.left:p.left + p.mask.shape[1]] = p.visible
    whole = p.polygon is not None and p.num_visible == p.area
    return {
        **_mask_annotation(visible, p.polygon if whole else None),
        "shape": p.shape,
        "texture": p.texture,
        "color": [int(v) for v in p.rgb],
        "camouflaged": p.camouflaged,
    }


def _densities(seed: int, num_images: int, num_buckets: int) -> List[int]:
    """The density bucket of each image: exact shares, shuffled."""
    position = np.random.default_rng([seed]).permutation(num_images)
    return [int(p) * num_buckets // num_images for p in position]


def _render_images(
    image_dir: str, file_names: List[str], seed: int, image_size: int, layout: SceneLayout
) -> Tuple[list, list]:
    """Render and save every image; returns the COCO (images, annotations) lists."""
    images, annotations = [], []
    category_of = {name: i + 1 for i, name in enumerate(layout.classes)}
    buckets = _densities(seed, len(file_names), len(layout.densities))
    for image_id, (file_name, bucket) in enumerate(zip(file_names, buckets), start=1):
        rng = np.random.default_rng([seed, image_id])
        density, low, high = layout.densities[bucket]
        pieces: Optional[List[_Piece]] = None
        while pieces is None or len(pieces) < layout.min_objects:
            pixels, pieces = _render_scene(rng, image_size, int(rng.integers(low, high + 1)),
                                           layout.shapes)
        _save_image(pixels, os.path.join(image_dir, file_name))
        images.append({"id": image_id, "file_name": file_name, "width": image_size,
                       "height": image_size, "density": density})
        for p in pieces:
            ann = {"id": len(annotations) + 1, "image_id": image_id,
                   "category_id": category_of[f"{p.texture} {p.shape}"]}
            ann.update(_annotation(p, image_size))
            annotations.append(ann)
    return images, annotations


def generate_study_scenes(
    json_file: str, image_dir: str, num_images: int, seed: int, image_size: int = 256,
    layout: SceneLayout = STUDY_LAYOUT,
) -> str:
    """
    Write ``num_images`` PNG images of ``image_size`` x ``image_size`` pixels
    (``000001.png``, ...) into ``image_dir`` and their COCO instance annotations into
    ``json_file``, with the shapes and object counts of ``layout`` (default: the study's).
    The same arguments give byte-identical files; if they were already generated with the
    same arguments and scene constants, nothing is rewritten (``<json_file>.stamp`` records
    both). Returns ``json_file``.
    """
    scene = dict(_SCENE_CONSTANTS)
    if layout != STUDY_LAYOUT:  # the study's stamps predate layouts and stay valid as they are
        scene["layout"] = asdict(layout)
    params = {
        "version": _FORMAT_VERSION,
        "num_images": int(num_images),
        "seed": int(seed),
        "image_size": int(image_size),
        "scene": json.loads(json.dumps(scene)),  # tuples as the stamp's lists
    }
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"}
                  for i, name in enumerate(layout.classes)]
    file_names = [f"{i:06d}.png" for i in range(1, num_images + 1)]
    info = {"description": layout.description, "version": str(_FORMAT_VERSION),
            "seed": int(seed)}
    return _generate_once(
        json_file, image_dir, params, file_names, info, categories,
        lambda: _render_images(image_dir, file_names, seed, image_size, layout),
    )


def _load_study(name: str) -> List[Dict[str, Any]]:
    """DatasetCatalog function: generate the dataset's files on first use, then load them."""
    meta = MetadataCatalog.get(name)
    generate_study_scenes(meta.json_file, meta.image_root, **meta.synthetic_params)
    return load_coco_json(meta.json_file, meta.image_root, name,
                          extra_annotation_keys=["shape", "texture", "color", "camouflaged"])


# drawing colours of the classes (the objects' own colours say nothing of their class)
_CLASS_COLORS = ([230, 25, 75], [245, 130, 48], [60, 180, 75], [70, 240, 240],
                 [0, 130, 200], [145, 30, 180])


def register_synthetic_study(root: Optional[str] = None) -> None:
    """
    Register the datasets of ``STUDY_SPLITS`` under ``<root>/synthetic_study`` (images in
    ``<split>/``, json in ``annotations/<split>.json``; default root:
    :func:`default_data_root`). Nothing is generated here: the files are made on the first
    ``DatasetCatalog.get`` or ``prepare_dataset``. Names already registered are left as they
    are. Dataset dicts carry each annotation's "shape", "texture", "color", "camouflaged".
    Metadata: thing_classes, thing_dataset_id_to_contiguous_id (json ids 1..6),
    thing_colors, json_file, image_root, evaluator_type="coco", generated_on_load=True and
    synthetic_params (the generator's arguments).
    """
    base = os.path.join(root or default_data_root(), "synthetic_study")
    for name, (split, num_images, seed) in STUDY_SPLITS.items():
        _register_generated(name, _load_study, base, split, STUDY_CLASSES,
                            [list(c) for c in _CLASS_COLORS],
                            {"num_images": num_images, "seed": seed, "image_size": 256})
