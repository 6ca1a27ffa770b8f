"""Which tokens a pruned ViTDet keeps, block by block, and what it detects.

    python -m tokenprune.visualize --config-file configs/Synthetic/mask_rcnn_vitdet_t_svit.py \\
        --input img1.png img2.jpg --output out/vis [--score-thresh 0.5] [--keep-ratio 0.5] \\
        [--prompt "red shapes" "the largest object" | --task-id 0 2] [-- key=value ...]

For every input image, one PNG ``<output>/<image name>.png`` with

* a panel of the final detections (Detectron2's ``Visualizer`` with the metadata of the
  config's test dataset; detections with score >= ``--score-thresh``), and
* one panel per pruned block: the image as the model sees it (after the test mapper's
  resize) with the pruned token cells darkened, titled with the block index and the kept
  fraction of the block's token grid (``PrunedViT.last_keep_ratios``).

The input is preprocessed like the config's test mapper (``dataloader.test.mapper``:
its ``augmentations`` and ``image_format``). Weights: ``train.init_checkpoint``.
``--keep-ratio R`` forces a top-k rate R in every pruned block instead of the gates'
per-image decision. ``--prompt`` / ``--task-id`` go into the input dict as ``"prompt"`` /
``"task_id"`` for task-guided models (VLTP). Several of them (given both, they are paired
in order) put one row per prompt or task into each image's PNG, so the kept tokens of
different tasks on the same image sit side by side.

Bad input (unreadable or non-image files, an output folder that cannot be written, a
config whose test dataset is missing, a bad keep ratio or threshold) stops with one line
``tokenprune.visualize: error: ...`` and exit status 2, before any image is written. The
PNGs are written to temporary files and renamed into place only after every image is done.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from .cli import (build_eval_model, figure_png, load_tool_config, make_output_dir, run_tool,
                  tool_parser)
from .errors import ConfigError, InputError

__all__ = ["main"]

PROG = "tokenprune.visualize"


def _read_image(path: str, fmt: Optional[str] = None) -> Optional[np.ndarray]:
    """The image in ``fmt`` as Detectron2's mappers read it; ``fmt=None``: only check that
    the file is a readable image (one-line InputError otherwise)."""
    from PIL import Image, UnidentifiedImageError

    if not os.path.exists(path):
        raise InputError(f"input image not found: {path}")
    if os.path.isdir(path):
        raise InputError(f"input {path} is a folder, not an image file")
    try:
        if fmt is None:
            with Image.open(path) as im:
                im.load()
                if im.width == 0 or im.height == 0:
                    raise InputError(f"input {path} is an empty image")
            return None
        from detectron2.data.detection_utils import read_image

        return read_image(path, format=fmt)
    except UnidentifiedImageError:
        raise InputError(f"input {path} is not an image file PIL can read") from None
    except (OSError, ValueError, SyntaxError) as e:  # unreadable, truncated, bad header
        reason = (e.strerror if isinstance(e, OSError) else None) or e
        raise InputError(f"cannot read image {path}: {reason}") from e


def _output_names(paths: List[str]) -> List[str]:
    names, used = [], set()
    for p in paths:
        stem = os.path.splitext(os.path.basename(p))[0] or "image"
        name, k = f"{stem}.png", 1
        while name in used:
            name, k = f"{stem}_{k}.png", k + 1
        used.add(name)
        names.append(name)
    return names


_Panel = Tuple[np.ndarray, str]  # (RGB image, title)


def _figure(title: str, rows: List[List[_Panel]]) -> bytes:
    """One row of panels per guidance; a single row wraps at 4 panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(rows) == 1:
        rows = [rows[0][i:i + 4] for i in range(0, len(rows[0]), 4)]
    nrows, ncols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.4 * nrows + 0.4),
                             dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for row_axes, row in zip(axes, rows):
        for ax, (img, t) in zip(row_axes, row):
            ax.imshow(img)
            ax.set_title(t, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return figure_png(fig)


def _guidances(prompts: Optional[List[str]], task_ids: Optional[List[int]]) -> List[Dict]:
    """The input-dict entries of each requested guidance (``[{}]`` when none)."""
    prompts, task_ids = prompts or [], task_ids or []
    if prompts and task_ids and len(prompts) != len(task_ids):
        raise InputError(f"{len(prompts)} --prompt values and {len(task_ids)} --task-id values: "
                         f"give one kind, or as many of each (they are paired in order)")
    n = max(len(prompts), len(task_ids), 1)
    out = [{} for _ in range(n)]
    for d, p in zip(out, prompts):
        d["prompt"] = p
    for d, t in zip(out, task_ids):
        d["task_id"] = t
    return out


def _guidance_label(guidance: Dict) -> str:
    parts = [f'"{guidance["prompt"]}"'] if "prompt" in guidance else []
    if "task_id" in guidance:
        parts.append(f"task {guidance['task_id']}")
    return " ".join(parts)


def build_parser() -> argparse.ArgumentParser:
    parser = tool_parser(PROG, __doc__.split("\n\n")[0])
    parser.add_argument("--input", nargs="+", required=True, metavar="IMG",
                        help="JPEG/PNG images (one output PNG each)")
    parser.add_argument("--output", required=True, metavar="DIR")
    parser.add_argument("--score-thresh", type=float, default=0.5,
                        help="minimum score of the drawn detections")
    parser.add_argument("--keep-ratio", type=float, default=None, metavar="R",
                        help="force a top-k keep ratio in (0, 1] in every pruned block")
    parser.add_argument("--prompt", nargs="+", default=None, metavar="TEXT",
                        help="input 'prompt' (task-guided models); several: one row each")
    parser.add_argument("--task-id", nargs="+", type=int, default=None, metavar="ID",
                        help="input 'task_id'; several: one row each")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser


def main(args: argparse.Namespace) -> List[str]:
    if not 0.0 <= args.score_thresh <= 1.0:
        raise InputError(f"--score-thresh must lie in [0, 1], got {args.score_thresh:g}")
    if args.keep_ratio is not None and not 0.0 < args.keep_ratio <= 1.0:
        raise InputError(f"keep ratio {args.keep_ratio:g} is outside (0, 1]")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {args.device}: CUDA is not available on this machine")
    guidances = _guidances(args.prompt, args.task_id)

    import detectron2.data.transforms as T
    from detectron2.config import instantiate
    from detectron2.data import MetadataCatalog
    from detectron2.data.detection_utils import convert_image_to_rgb
    from detectron2.utils.visualizer import Visualizer

    from .engine.drawing import keep_overlay
    from .modeling import find_pruned_vit

    for path in args.input:  # every input readable before any work
        _read_image(path)
    cfg = load_tool_config(args, splits=("test",))  # its metadata names the classes
    mapper = cfg.dataloader.get("test", {}).get("mapper")
    if mapper is None:
        raise ConfigError(f"{args.config_file}: no dataloader.test.mapper to preprocess with")
    fmt = mapper.get("image_format", "BGR")
    augs = T.AugmentationList(list(instantiate(mapper.get("augmentations", []) or [])))
    test_names = _as_list(cfg.dataloader.test.get("dataset", {}).get("names"))
    metadata = MetadataCatalog.get(test_names[0]) if test_names else None

    images = [(p, _read_image(p, fmt)) for p in args.input]
    out_dir = make_output_dir(args.output)
    model = build_eval_model(cfg, args.device)
    vit = find_pruned_vit(model)
    if args.keep_ratio is not None and vit is not None:
        vit.fixed_keep_ratio = {i: float(args.keep_ratio) for i in vit.pruned_blocks}
    patch = vit.patch_embed.proj.stride[0] if vit is not None else 16

    pending: List[Tuple[str, str]] = []  # (temporary file, final path)
    try:
        for (path, image), name in zip(images, _output_names(args.input)):
            h0, w0 = image.shape[:2]
            aug_input = T.AugInput(image)
            augs(aug_input)
            seen = aug_input.image
            seen_rgb = convert_image_to_rgb(seen, fmt)
            orig_rgb = convert_image_to_rgb(image, fmt)
            chw = torch.as_tensor(np.ascontiguousarray(seen.transpose(2, 0, 1)))
            padded = model.preprocess_image([{"image": chw}]).tensor.shape[-2:]
            grid = (padded[0] // patch, padded[1] // patch)
            rows = []
            for guidance in guidances:
                inp: Dict = {"image": chw, "height": h0, "width": w0, "file_name": path,
                             **guidance}
                with torch.no_grad():
                    instances = model([inp])[0]["instances"].to("cpu")
                instances = instances[instances.scores >= args.score_thresh]
                det = Visualizer(orig_rgb, metadata=metadata).draw_instance_predictions(
                    instances).get_image()
                label = _guidance_label(guidance)
                det_title = (f"{label}\n" if label else "") + \
                    f"{len(instances)} detections (score >= {args.score_thresh:g})"
                row, kept = [], []
                if vit is not None:
                    for i in sorted(vit.last_keep_masks):
                        keep = vit.last_keep_masks[i][0].reshape(grid).cpu().numpy()
                        frac = float(vit.last_keep_ratios[i][0])
                        row.append((keep_overlay(seen_rgb, keep, patch),
                                    f"block {i}: kept {frac:.0%} ({int(keep.sum())}/{keep.size})"))
                        kept.append(f"block {i} {frac:.0%}")
                if not row:
                    det_title += "\n(no pruned blocks: dense backbone)"
                rows.append([(det, det_title), *row])
                print(f"{path}{' ' + label if label else ''}: {len(instances)} detections"
                      + (f"; kept: {', '.join(kept)}" if kept else ""), flush=True)
            png = _figure(os.path.basename(path), rows)
            fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".tmp-", suffix=".png")
            pending.append((tmp, os.path.join(out_dir, name)))
            with os.fdopen(fd, "wb") as f:
                f.write(png)
        umask = os.umask(0)
        os.umask(umask)
        for tmp, final in pending:
            os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, final)
    finally:
        for tmp, _ in pending:
            if os.path.exists(tmp):
                os.unlink(tmp)
    written = [final for _, final in pending]
    print(f"{PROG}: wrote {len(written)} image(s) to {out_dir}", flush=True)
    return written


def _as_list(value) -> List[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


if __name__ == "__main__":
    run_tool(PROG, main, build_parser())
