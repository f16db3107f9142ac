"""The profile's main model on each data set: how well it segments and how well it is calibrated, in one table.

Trains (or loads from the cache) the model each chapter uses, then reads its logits from the logit store and prints,
per data set and split: mIoU and pixel accuracy (train and test, so under-fitting shows), mean confidence against
accuracy, pooled and image-wise ECE. These are the figures an issue's closing note quotes.

    python benchmarks/model_report.py                              # active profile, synthetic + CamVid if on disk
    SEGCAL_PROFILE=full python benchmarks/model_report.py --json report.json
"""

from __future__ import annotations

import argparse
import json
import time

from segcal_lib import pipeline
from segcal_lib.config import describe, get_profile
from segcal_lib.data.datasets import find_camvid
from segcal_lib.metrics import CalibrationMeter, SegmentationMeter


def measure(store) -> dict:
    """Segmentation and calibration figures of a :class:`~segcal_lib.logit_store.LogitStore`."""
    seg = SegmentationMeter(store.num_classes)
    cal = CalibrationMeter(store.num_classes, n_bins=10, classwise=False)
    for logits, labels in store.iter_batches(16):
        seg.update(logits, labels)
        cal.update(logits, labels)
    s, c = seg.compute(), cal.compute()
    return {"miou": s["miou"], "pixel_accuracy": s["pixel_accuracy"], "mean_confidence": c["confidence"],
            "ece": c["ece"], "image_ece": c["image_ece"], "image_ece_std": c["image_ece_std"],
            "iou": [None if v != v else round(float(v), 4) for v in s["iou"]]}


def report(dataset: str, splits: tuple[str, ...], extra_tests: dict[str, dict], progress: bool = False,
           **overrides) -> list[dict]:
    start = time.perf_counter()
    model, cfg = pipeline.get_model(dataset, progress=progress, **overrides)
    rows = []
    meta = getattr(model, "train_meta", {})
    common = {"dataset": dataset, "model": cfg.model, "iters": cfg.iters, "crop": cfg.crop_size,
              "size": cfg.data.get("size"), "pretrained": bool(model.pretrained_loaded),
              "train_time_s": meta.get("train_time_s"), "model_ready_s": time.perf_counter() - start}
    tests = {split: {} for split in splits} | extra_tests
    for label, kw in tests.items():
        split = kw.pop("split", label)
        store = pipeline.get_logits(model, cfg, split, progress=progress, **kw)
        rows.append(common | {"split": label} | measure(store))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["synthetic", "camvid"], choices=pipeline.DATASET_NAMES)
    parser.add_argument("--model", help="another registered model than the profile's")
    parser.add_argument("--iters", type=int, help="another number of training steps than the profile's")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--progress", action="store_true", help="show progress bars (off: they clutter logs)")
    args = parser.parse_args()
    print(describe())
    p = get_profile()
    print(f"profile {p.name}: {args.model or p.model}, images {p.image_size}, crop {p.crop_size}, "
          f"{args.iters or p.train_iters} steps of batch {p.batch_size}")
    rows = []
    for dataset in args.datasets:
        if dataset == "camvid" and find_camvid() is None:
            print("camvid: not on this machine, skipped")
            continue
        extra = ({f"test-{d}": {"split": "test", "domain": d} for d in ("dusk", "day")} if dataset == "camvid"
                 else {f"test-fog{s}": {"split": "test", "shift": "fog", "severity": s} for s in (3,)})
        overrides = {k: v for k, v in (("model", args.model), ("iters", args.iters)) if v is not None}
        rows += report(dataset, ("train", "val", "test"), extra, args.progress, **overrides)
    head = (f"{'dataset':10s}{'split':11s}{'mIoU':>7s}{'acc':>7s}{'conf':>7s}{'conf-acc':>9s}{'ECE':>8s}"
            f"{'imgECE':>8s}")
    print("\n" + head)
    for r in rows:
        print(f"{r['dataset']:10s}{r['split']:11s}{r['miou']:7.1%}{r['pixel_accuracy']:7.1%}"
              f"{r['mean_confidence']:7.3f}{r['mean_confidence'] - r['pixel_accuracy']:+9.3f}{r['ece']:8.4f}"
              f"{r['image_ece']:8.4f}")
    for d in dict.fromkeys(r["dataset"] for r in rows):
        r = next(r for r in rows if r["dataset"] == d)
        ready = "loaded" if r["train_time_s"] is None or r["model_ready_s"] < r["train_time_s"] else "trained"
        print(f"{d}: {r['model']} ({'ImageNet' if r['pretrained'] else 'random'} init), {r['iters']} steps at crop "
              f"{r['crop']} on {r['size']}, training took {r['train_time_s'] or 0:.0f} s ({ready} now)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
