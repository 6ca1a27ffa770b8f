"""COCO-format datasets: checks that a registered dataset's files exist, and a generated
folder in the real COCO layout for testing Detectron2's builtin COCO registration."""

import difflib
import os

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..errors import DatasetNotFoundError
from .synthetic import SHAPE_CLASSES, SYNTHETIC_SPLITS, generate_synthetic_shapes

__all__ = ["prepare_dataset", "write_coco_layout"]

# Metadata keys of Detectron2's dataset registrations that name files or folders.
_PATH_KEYS = ("json_file", "image_root", "panoptic_json", "panoptic_root", "sem_seg_root")

# COCO categories that stand in for the shapes in a generated COCO-layout folder.
_COCO_STAND_INS = {"circle": "sports ball", "square": "tv", "triangle": "kite", "star": "frisbee"}


def _missing_path_fix(path: str) -> str:
    """How to fix a missing ``path``: point DETECTRON2_DATASETS at the folder above it."""
    root = os.path.abspath(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")))
    rel = os.path.relpath(os.path.abspath(path), root)
    if rel.split(os.sep)[0] == os.pardir:
        return "create it, or register the dataset with the paths that hold its files"
    return (
        f"set DETECTRON2_DATASETS (now '{root}', read when Detectron2 is imported) to the "
        f"folder that holds {rel.split(os.sep)[0]}/, as in Detectron2's datasets/README.md"
    )


def prepare_dataset(name: str) -> None:
    """
    Make sure the files of the registered dataset ``name`` exist. A dataset whose metadata
    has ``generated_on_load=True`` (the synthetic ones) is loaded once, which generates its
    files; for any other dataset the registered paths (``json_file``, ``image_root``, ...) are
    checked. Call it before building a data loader or a COCOEvaluator for ``name``.

    Raises:
        DatasetNotFoundError: ``name`` is not registered, or one of its paths is missing.
    """
    if name not in DatasetCatalog:
        registered = DatasetCatalog.list()
        similar = difflib.get_close_matches(name, registered, n=5, cutoff=0.6)
        if similar:
            hint = "similar registered names: " + ", ".join(similar)
        else:
            examples = [n for n in [*SYNTHETIC_SPLITS, "coco_2017_val"] if n in registered]
            hint = "registered names include: " + ", ".join(examples)
        raise DatasetNotFoundError(f"dataset '{name}' is not registered; {hint}")
    meta = MetadataCatalog.get(name)
    if meta.get("generated_on_load", False):
        DatasetCatalog.get(name)  # its DatasetCatalog function writes the files when missing
        return
    for key in _PATH_KEYS:
        path = meta.get(key)
        if path is None or "://" in str(path) or os.path.exists(path):
            continue
        raise DatasetNotFoundError(
            f"dataset '{name}': its {key} {os.path.abspath(path)} does not exist; "
            + _missing_path_fix(path)
        )


def write_coco_layout(
    root: str, split: str = "val2017", num_images: int = 8, seed: int = 0
) -> None:
    """
    Write generated shapes in COCO's folder layout: the annotations in
    ``root/coco/annotations/instances_{split}.json`` and the images (256x256 JPEG) in
    ``root/coco/{split}/000000000001.jpg``, ``000000000002.jpg``, ... The json lists
    COCO's 80 thing categories with their real ids, so Detectron2's builtin registration
    (``coco_2017_val`` etc., with ``DETECTRON2_DATASETS=root``) loads it; the shapes are
    labelled with stand-in COCO classes (circle: sports ball, square: tv, triangle: kite,
    star: frisbee).
    """
    coco_meta = MetadataCatalog.get("coco_2017_val")  # Detectron2's builtin COCO metadata
    json_id = {c: i for i, c in coco_meta.thing_dataset_id_to_contiguous_id.items()}
    categories = [{"id": json_id[c], "name": n} for c, n in enumerate(coco_meta.thing_classes)]
    id_of_name = {c["name"]: c["id"] for c in categories}
    generate_synthetic_shapes(
        os.path.join(root, "coco", "annotations", f"instances_{split}.json"),
        os.path.join(root, "coco", split),
        num_images,
        seed,
        file_name_format="{:012d}.jpg",
        categories=categories,
        shape_category_ids=[id_of_name[_COCO_STAND_INS[s]] for s in SHAPE_CLASSES],
    )
