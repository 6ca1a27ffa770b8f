"""Run a trained TokenPrune model on your own images: :class:`Predictor`.

Detectron2's ``DefaultPredictor`` needs a yacs config; this is its LazyConfig counterpart::

    predictor = Predictor("configs/Synthetic/mask_rcnn_vitdet_t_svit.py",
                          checkpoint="output/synthetic_svit/model_final.pth")
    pred = predictor("photo.jpg")            # or an HxWxC array in the config's format
    pred.instances                            # Detectron2 Instances, original image size
    pred.keep_ratios                          # {block index: kept fraction of the tokens}
    preds = predictor.predict_batch([img1, img2])   # one forward, unequal sizes
    fast = Predictor(config, checkpoint=..., compile=True)   # torch.compile (inductor)

Preprocessing is the config's test mapper (``dataloader.test.mapper``: ``image_format`` and
``augmentations``, e.g. ViTDet's ``ResizeShortestEdge``); outputs are rescaled to the input
size with Detectron2's ``detector_postprocess``, as the meta-architecture does.

With ``compile`` the model's inference (the PrunedViT's blocks, the rest of the network) is
compiled once, at construction (:func:`~tokenprune.modeling.compiled.compile_model`); the
first prediction pays the compile. Where inductor cannot run (no C++ compiler) one warning
line says so and the model runs eagerly.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
from omegaconf import DictConfig

import detectron2.data.transforms as T
from detectron2.config import instantiate
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Instances

from ..config import apply_overrides, load_config
from ..errors import BadImageError, ConfigError, InputError
from ..modeling.autocast import amp_dtype
from ..modeling.compiled import compile_model
from ..modeling.meta_arch import find_pruned_vit
from .compiling import compile_mode

__all__ = ["CONFIDENCE_THRESHOLD", "Predictor", "Prediction", "PreparedImage",
           "TestPreprocessing", "read_image"]

CONFIDENCE_THRESHOLD = 0.5  # the default minimum detection score (Detectron2's demo's)

ImageLike = Union[str, np.ndarray]
_HIGH_BIT_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def read_image(path: str, fmt: str = "BGR") -> np.ndarray:
    """An image file as an (H, W, C) uint8 array in ``fmt`` ("BGR", "RGB", "L", ...).

    EXIF orientation is applied; 16-bit and 32-bit grayscale images are scaled to 8 bits
    (by their type's range: 65535 for 16-bit PNGs); alpha is dropped; grayscale is
    replicated to three channels. Any failure is one :class:`BadImageError` line.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    from detectron2.data.detection_utils import convert_PIL_to_numpy

    if not os.path.exists(path):
        raise BadImageError(f"image not found: {path}")
    if os.path.isdir(path):
        raise BadImageError(f"{path} is a folder, not an image file")
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.width == 0 or im.height == 0:
                raise BadImageError(f"{path} is an empty image")
            if im.mode in _HIGH_BIT_DEPTH_MODES:
                im = Image.fromarray(_to_uint8(np.asarray(im), im.mode))
            return np.ascontiguousarray(convert_PIL_to_numpy(im, fmt))
    except UnidentifiedImageError:
        raise BadImageError(f"{path} is not an image file PIL can read") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        reason = (e.strerror if isinstance(e, OSError) else None) or e
        raise BadImageError(f"cannot read image {path}: {reason}") from e


def _to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """A 16-bit (or 32-bit int / float) grayscale array scaled into 0..255."""
    if mode.startswith("I;16"):
        top = 65535.0
    elif mode == "F":
        top = 1.0 if float(np.nanmax(a, initial=0.0)) <= 1.0 else 255.0
    else:  # "I": 32-bit ints; PIL reads 16-bit PNGs this way too
        top = 65535.0 if int(a.max(initial=0)) > 255 else 255.0
    return (np.nan_to_num(a.astype(np.float64)) * (255.0 / top)).clip(0, 255).round() \
        .astype(np.uint8)


@dataclass
class PreparedImage:
    """One image ready for the model: its input dict and the image the model sees.

    Attributes:
        inputs: Detectron2 input dict: "image" (C, H', W') uint8 tensor after the test
            resize, "height"/"width" of the original image, plus any guidance entries.
        image: (H', W', C) the resized image in the config's format (for drawings).
    """

    inputs: Dict
    image: np.ndarray


@dataclass
class Prediction:
    """What the model found in one image.

    Attributes:
        instances: Detectron2 ``Instances`` at the original image size (CPU): pred_boxes
            (XYXY pixels), scores, pred_classes, pred_masks (H, W bool) for mask models.
        keep_ratios: {pruned block index: fraction of the token grid kept} ({} when the
            backbone is dense). The grid covers the padded input (the resized image is
            its top-left part).
        keep_masks: {block index: (grid_h, grid_w) bool keep mask} (gated blocks only).
        image: (H', W', C) the image as the model saw it, in the config's format.
        patch_size: token cell size in pixels of ``image``.
    """

    instances: Instances
    keep_ratios: Dict[int, float] = field(default_factory=dict)
    keep_masks: Dict[int, np.ndarray] = field(default_factory=dict)
    image: Optional[np.ndarray] = None
    patch_size: int = 16


class TestPreprocessing:
    """The config's test mapper as the model's input path: ``read`` an image file in its
    ``image_format``, ``prepare`` (check, resize with its ``augmentations``) an image, and
    ``metadata`` of the first test dataset (class names for drawings).

    Raises ConfigError if the config has no ``dataloader.test.mapper``.
    """

    def __init__(self, cfg: DictConfig):
        from ..data import test_metadata

        mapper = cfg.get("dataloader", {}).get("test", {}).get("mapper")
        if mapper is None:
            raise ConfigError("the config has no dataloader.test.mapper to preprocess with")
        self.input_format: str = mapper.get("image_format", "BGR")
        self.augmentations = T.AugmentationList(list(instantiate(mapper.get("augmentations")
                                                                 or [])))
        self.metadata = test_metadata(cfg)

    def read(self, path: str) -> np.ndarray:
        """The image file in the config's input format (see :func:`read_image`)."""
        return read_image(path, self.input_format)

    def prepare(self, image: ImageLike, task_id: Optional[int] = None,
                prompt: Optional[str] = None, guidance=None) -> PreparedImage:
        """Read (if a path), check and resize one image; add the guidance entries."""
        if isinstance(image, (str, os.PathLike)):
            image = self.read(os.fspath(image))
        image = self._check_array(image)
        h, w = image.shape[:2]
        aug = T.AugInput(image)
        try:
            self.augmentations(aug)
        except (ValueError, SystemError) as e:  # e.g. a 1x5000 image resized to 0 rows
            raise BadImageError(f"cannot resize a {w}x{h} image for the model: {e}") from e
        seen = np.ascontiguousarray(aug.image)
        if min(seen.shape[:2]) < 1:
            raise BadImageError(f"a {w}x{h} image resizes to nothing for the model")
        inputs: Dict = {"image": torch.as_tensor(seen.transpose(2, 0, 1).copy()),
                        "height": h, "width": w}
        if task_id is not None:
            inputs["task_id"] = task_id
        if prompt is not None:
            inputs["prompt"] = prompt
        if guidance is not None:
            inputs["guidance"] = torch.as_tensor(np.asarray(guidance, dtype=np.float32))
        return PreparedImage(inputs, seen)

    def _check_array(self, image) -> np.ndarray:
        if not isinstance(image, np.ndarray):
            raise InputError(f"an image must be a file path or a numpy array, "
                             f"got {type(image).__name__}")
        channels = 1 if self.input_format == "L" else 3
        if image.ndim != 3 or image.shape[2] != channels or image.dtype != np.uint8:
            raise InputError(f"an image array must be (H, W, {channels}) uint8 in "
                             f"{self.input_format}, got {image.shape} {image.dtype}")
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise BadImageError(f"empty image array {image.shape}")
        return image


class _Inference(nn.Module):
    """``model.inference`` without its postprocessing as a module's forward: what the
    Predictor runs (and compiles)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: List[Dict]) -> List[Instances]:
        return self.model.inference(inputs, do_postprocess=False)


class Predictor:
    """A model built from a LazyConfig for inference on images (see module docstring).

    Args:
        config: a LazyConfig file path or an already loaded config (copied, not changed).
        checkpoint: weights to load; None: the config's ``train.init_checkpoint``. The load
            summary is printed; no checkpoint at all, or one without the gates (SViT) or
            pruning decoders (VLTP) of a pruned model, is a CheckpointError.
        overrides: ``key=value`` config overrides (strict, as on the command line).
        device: "cpu", "cuda", ...; None: the config's ``train.device``.
        confidence_threshold: detections scored below it are dropped before resizing their
            masks (the commands' ``--confidence-threshold``, same default).
        precision: "float32" (or None), "bfloat16" or "float16" (CUDA): the forward pass
            under ``torch.autocast`` at that dtype.
        allow_untrained_gates: run with gates the checkpoint lacks (they prune at random),
            or with random weights when there is no checkpoint.
        compile: a mode of :data:`~tokenprune.modeling.compiled.COMPILE_MODES` ("none",
            "default": inductor, "freeze": inductor with frozen weights), or True
            ("default") / False ("none"): the inference compiled once, here; the first
            prediction pays the compile. ``model`` stays the eager module (its PrunedViT's
            statistics, state dict); the predictions run the compiled one.
    """

    def __init__(self, config: Union[str, DictConfig], checkpoint: Optional[str] = None,
                 overrides: Sequence[str] = (), device: Optional[str] = None,
                 confidence_threshold: float = CONFIDENCE_THRESHOLD,
                 precision: Optional[str] = None, allow_untrained_gates: bool = False,
                 compile: Union[bool, str] = False):
        from ..checkpoint import check_device, load_model

        if isinstance(config, str):
            cfg = load_config(config, overrides)
        else:
            cfg = apply_overrides(copy.deepcopy(config), overrides)
        if checkpoint is not None:
            cfg.train.init_checkpoint = checkpoint
        self.preprocessing = TestPreprocessing(cfg)
        if not 0.0 <= confidence_threshold <= 1.0:
            raise InputError(f"confidence threshold must lie in [0, 1], "
                             f"got {confidence_threshold:g}")
        self.cfg = cfg
        self.input_format = self.preprocessing.input_format
        self.metadata = self.preprocessing.metadata
        self.confidence_threshold = confidence_threshold
        self.compile = compile_mode(compile)
        device = device or cfg.train.device
        check_device(device)
        self._device_type = torch.device(device).type
        self._amp = None if precision in (None, "float32") else amp_dtype(precision, device)
        self.model = load_model(cfg, device, allow_untrained_gates=allow_untrained_gates)
        self._inference = compile_model(_Inference(self.model), self.compile, device)
        vit = find_pruned_vit(self.model)
        self.patch_size = int(vit.patch_embed.proj.stride[0]) if vit is not None else 16

    def read(self, path: str) -> np.ndarray:
        """The image file in the config's input format (see :func:`read_image`)."""
        return self.preprocessing.read(path)

    def prepare(self, image: ImageLike, task_id: Optional[int] = None,
                prompt: Optional[str] = None, guidance=None) -> PreparedImage:
        """Read (if a path), check and resize one image; add the guidance entries."""
        return self.preprocessing.prepare(image, task_id, prompt, guidance)

    @torch.no_grad()
    def forward(self, prepared: List[PreparedImage]) -> List[Prediction]:
        """One batched forward over prepared images (any sizes; padded together)."""
        if not prepared:
            return []
        inputs = [p.inputs for p in prepared]
        with torch.autocast(self._device_type, dtype=self._amp, enabled=self._amp is not None):
            raw = self._inference(inputs)
        vit = find_pruned_vit(self.model)
        out = []
        for b, (p, r) in enumerate(zip(prepared, raw)):
            r = r.to("cpu")
            if self.confidence_threshold > 0:
                r = r[r.scores >= self.confidence_threshold]
            instances = detector_postprocess(r, p.inputs["height"], p.inputs["width"])
            out.append(Prediction(instances, *self._keep_stats(vit, b), image=p.image,
                                  patch_size=self.patch_size))
        return out

    @staticmethod
    def _keep_stats(vit, b: int) -> Tuple[Dict[int, float], Dict[int, np.ndarray]]:
        if vit is None:
            return {}, {}
        ratios = {i: float(r[b]) for i, r in sorted(vit.last_keep_ratios.items())}
        masks = {i: m[b].reshape(vit.last_grid).cpu().numpy()
                 for i, m in sorted(vit.last_keep_masks.items())}
        return ratios, masks

    def __call__(self, image: ImageLike, task_id: Optional[int] = None,
                 prompt: Optional[str] = None, guidance=None) -> Prediction:
        """Predict one image (a path or an (H, W, C) array in the config's format)."""
        return self.predict_batch([image], task_id=task_id, prompt=prompt,
                                  guidance=guidance)[0]

    def predict_batch(self, images: Sequence[ImageLike], task_id: Optional[int] = None,
                      prompt: Optional[str] = None, guidance=None) -> List[Prediction]:
        """Predict several images in one forward (the same guidance for all)."""
        return self.forward([self.prepare(im, task_id, prompt, guidance) for im in images])
