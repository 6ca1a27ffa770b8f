"""What a config reads: the dataset names of its loaders (the one place a ``names`` entry,
a string or a list, becomes a list), its test metadata, the first inputs of its test set,
and a registered dataset of the first images of one (:func:`first_images_dataset`)."""
from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional, Sequence

from omegaconf import DictConfig

from ..errors import InputError

if TYPE_CHECKING:
    from detectron2.data.catalog import Metadata

__all__ = ["dataset_names", "test_metadata", "first_test_inputs", "first_images_dataset"]


def dataset_names(cfg: DictConfig, splits: Sequence[str] = ("train", "test")) -> List[str]:
    """Every dataset name the config's loaders of ``splits`` read."""
    names: List[str] = []
    for split in splits:
        node = cfg.get("dataloader", {}).get(split)
        value = node.dataset.names if node is not None and "dataset" in node else None
        if value is None:
            continue
        names.extend([value] if isinstance(value, str) else list(value))
    return names


def test_metadata(cfg: DictConfig) -> Optional[Metadata]:
    """Detectron2 metadata (class names, colours) of the config's first test dataset, or
    None when the config names none."""
    from detectron2.data import MetadataCatalog

    names = dataset_names(cfg, ("test",))
    return MetadataCatalog.get(names[0]) if names else None


def first_test_inputs(cfg: DictConfig, num: int) -> List[dict]:
    """The first ``num`` mapped inputs of the config's test loader (Detectron2 input dicts)."""
    from detectron2.config import instantiate

    inputs: List[dict] = []
    for batch in instantiate(cfg.dataloader.test):
        inputs.extend(batch)
        if len(inputs) >= num:
            break
    if not inputs:
        raise InputError(f"the test dataset {cfg.dataloader.test.dataset.names} has no images")
    return inputs[:num]


def first_images_dataset(names: Sequence[str], num: int) -> Optional[str]:
    """The name of a registered dataset holding the first ``num`` records of ``names`` (in
    order), or None when they hold ``num`` records or fewer (use them as they are).

    Its metadata is the first dataset's without its annotation file, so Detectron2's
    ``COCOEvaluator`` scores the subset against the subset's own ground truth (converted
    from the records into its ``output_dir``), not against images that were not run.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    records = [r for name in names for r in DatasetCatalog.get(name)]
    if len(records) <= num:
        return None
    first = records[:num]
    subset = f"{'+'.join(names)}@first{num}"
    if subset not in DatasetCatalog:
        DatasetCatalog.register(subset, lambda: [dict(r) for r in first])
        meta = {k: v for k, v in MetadataCatalog.get(names[0]).as_dict().items()
                if k not in ("name", "json_file")}
        MetadataCatalog.get(subset).set(**meta)
    return subset
