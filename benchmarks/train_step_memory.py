#!/usr/bin/env python
"""Peak memory of one training step of ViTDet-B Mask R-CNN on a CPU: dense vs SViT.

Each variant runs in a fresh subprocess (so one variant's peak cannot hide another's):
build the COCO recipe's model (``dense``: configs/COCO/mask_rcnn_vitdet_b_dense.py with
global attention in all 12 blocks, as SViT; ``svit``: configs/COCO/mask_rcnn_vitdet_b_svit.py,
blocks 3-11 pruned with the masked training path), then one step (forward, backward, AdamW)
on one SIZE x SIZE image with 4 ground-truth instances, float32. Reported: the process's
peak resident memory (``getrusage`` max RSS) and its growth over the RSS before the step.

    PY=${TOKENPRUNE_VENV:-$HOME/.cache/tokenprune/venv}/bin/python
    PYTHONPATH=$PWD/projects/TokenPrune $PY benchmarks/train_step_memory.py --size 1024
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {
    "dense": ("configs/COCO/mask_rcnn_vitdet_b_dense.py",
              ["model.backbone.net.window_block_indexes=[]"]),
    "svit": ("configs/COCO/mask_rcnn_vitdet_b_svit.py", []),
}


def _rss_gib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def measure(variant: str, size: int, threads: int) -> dict:
    """One training step of ``variant`` in this process; returns the figures."""
    import torch

    from detectron2.config import instantiate
    from detectron2.structures import BitMasks, Boxes, Instances
    from detectron2.utils.events import EventStorage

    from tokenprune.config import load_config

    torch.set_num_threads(threads)
    cfg_file, extra = CONFIGS[variant]
    cfg = load_config(os.path.join(ROOT, cfg_file), extra + [
        "train.device=cpu", f"model.backbone.net.img_size={size}",
        f"model.backbone.square_pad={size}"])
    torch.manual_seed(0)
    model = instantiate(cfg.model).train()
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    image = (torch.rand(3, size, size) * 255).round()
    inst = Instances((size, size))
    boxes = torch.tensor([[0.1, 0.1, 0.4, 0.5], [0.5, 0.2, 0.9, 0.6], [0.2, 0.6, 0.5, 0.9],
                          [0.6, 0.7, 0.8, 0.95]]) * size
    masks = torch.zeros(4, size, size, dtype=torch.bool)
    for m, (x0, y0, x1, y1) in zip(masks, boxes.int().tolist()):
        m[y0:y1, x0:x1] = True
    inst.gt_boxes, inst.gt_classes, inst.gt_masks = Boxes(boxes), torch.tensor([0, 1, 2, 3]), \
        BitMasks(masks)
    batch = [{"image": image, "instances": inst, "height": size, "width": size}]
    before = _rss_gib()
    start = time.perf_counter()
    with EventStorage(0):
        losses = model(batch)
        sum(losses.values()).backward()
    optimizer.step()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    return {"variant": variant, "size": size, "peak_gib": round(peak, 2),
            "rss_before_step_gib": round(before, 2), "step_growth_gib": round(peak - before, 2),
            "seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="input side in pixels")
    parser.add_argument("--variants", nargs="+", choices=sorted(CONFIGS),
                        default=["dense", "svit"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # the subprocess
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.size, args.threads)), flush=True)
        return
    rows = []
    for variant in args.variants:
        print(f"[memory] {variant} at {args.size}x{args.size} ...", file=sys.stderr, flush=True)
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", variant,
                               "--size", str(args.size), "--threads", str(args.threads)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"{variant}: failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    dense = next((r for r in rows if r["variant"] == "dense"), None)
    print("| variant | input | peak RSS (GiB) | RSS before step | step growth | ratio to dense "
          "(peak / growth) | step time (s) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = (f"{r['peak_gib'] / dense['peak_gib']:.2f} / "
                 f"{r['step_growth_gib'] / dense['step_growth_gib']:.2f}") if dense else "-"
        print(f"| {r['variant']} | {r['size']} | {r['peak_gib']} | {r['rss_before_step_gib']} | "
              f"{r['step_growth_gib']} | {ratio} | {r['seconds']} |")


if __name__ == "__main__":
    main()
