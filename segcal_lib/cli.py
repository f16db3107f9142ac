"""The ``segcal`` command line: calibrate stored logits of any model, from a folder of images or your own dumps.

::

    segcal demo-folder my_data                      # a small folder of street scenes in the folder layout, to try
    segcal split my_data                            # seeded train/val/test split -> my_data/splits.json
    segcal logits my_data --out stores              # train (or load) the profile's model, write stores/val, stores/test
    segcal calibrate --cal stores/val --test stores/test --calibrators ts --json table.json
    segcal apply --cal stores/val --calibrator ts --input stores/test --output stores/test_ts [--probs]
    segcal evaluate stores/test
    segcal list                                     # the calibrator names calibrate and apply take

``calibrate`` fits each named calibrator (any name of :func:`segcal_lib.calibrators.list_calibrators`) on the
calibration store and prints one row per method for the test store: image-wise ECE with a 95% bootstrap interval over
images, pooled ECE, NLL, Brier and mIoU (10 equal-width bins). Malformed input is refused with a message naming the
argument, before any output is written; outputs (JSON files, stores) are written atomically, so a failed command
leaves nothing behind.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from segcal_lib.evaluate import evaluate_store, fit_calibrator

__all__ = ["main", "open_store"]

DEFAULT_BATCH = 8


class CLIError(ValueError):
    """Bad input to a command: printed as ``segcal: error: ...`` with exit status 2."""


# ----------------------------------------------------------------------------------------------------- inputs

def open_store(path: str | Path, arg: str):
    """Open and check a LogitStore given on the command line as ``arg``; raise :class:`CLIError` naming it."""
    from segcal_lib.logit_store import LogitStore

    path = Path(path)
    if not path.is_dir():
        raise CLIError(f"{arg}: {str(path)!r} is not a folder; expected a logit store (logits.npy, labels.npy, "
                       f"meta.json)")
    for name, why in (("meta.json", "its metadata"), ("logits.npy", "the logits"), ("labels.npy", "the labels")):
        if not (path / name).is_file():
            raise CLIError(f"{arg}: {str(path)!r} has no {name} ({why}); a store needs logits, labels and metadata "
                           f"(write one with LogitStore.from_arrays)")
    try:
        store = LogitStore(path)
    except (ValueError, OSError) as exc:
        raise CLIError(f"{arg}: {str(path)!r} could not be read: {exc}") from exc
    lg, lb = store.logits, store.labels
    if lg.ndim != 4 or not np.issubdtype(lg.dtype, np.floating):
        raise CLIError(f"{arg}: logits must be a float array (N, C, H, W), got {lg.dtype} {lg.shape}")
    if lb.ndim != 3 or not np.issubdtype(lb.dtype, np.integer):
        raise CLIError(f"{arg}: labels must be an integer array (N, H, W), got {lb.dtype} {lb.shape}")
    if lb.shape != (lg.shape[0], *lg.shape[2:]):
        raise CLIError(f"{arg}: labels {lb.shape} do not match logits {lg.shape} (expected (N, H, W) = "
                       f"{(lg.shape[0], *lg.shape[2:])})")
    if lg.shape[0] == 0 or lg.shape[1] < 2:
        raise CLIError(f"{arg}: a store needs at least one image and two classes, got logits {lg.shape}")
    names = store.meta.get("names")
    if not isinstance(names, list) or len(names) != lg.shape[0]:
        raise CLIError(f"{arg}: meta.json must list one name per image ({lg.shape[0]}), got "
                       f"{len(names) if isinstance(names, list) else names!r}")
    if store.meta.get("scores", "logits") not in ("logits", "probs"):
        raise CLIError(f"{arg}: meta.json 'scores' must be 'logits' or 'probs', got {store.meta['scores']!r}")
    return store


def _calibrators(text: str, arg: str) -> list[str]:
    from segcal_lib.calibrators import list_calibrators, make_calibrator

    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise CLIError(f"{arg}: give at least one calibrator name; known: {', '.join(list_calibrators())}")
    for n in names:
        try:
            cal = make_calibrator(n)
        except ValueError as exc:
            raise CLIError(f"{arg}: {exc}") from exc
        if getattr(cal, "needs_images", False):
            raise CLIError(f"{arg}: calibrator {n!r} needs the images beside the logits, which a store does not "
                           f"hold; fit it from Python with cal.fit(logits, labels, images)")
    return names


def _same_classes(a, b, arg_a: str, arg_b: str) -> None:
    if a.num_classes != b.num_classes:
        raise CLIError(f"{arg_a} has {a.num_classes} classes but {arg_b} has {b.num_classes}; both stores must come "
                       f"from the same model's classes")


def _out_path(path: str | Path, arg: str, force: bool = False) -> Path:
    path = Path(path)
    if path.exists() and not force:
        raise CLIError(f"{arg}: {str(path)!r} exists already; choose a new path")
    if not path.parent.exists():
        raise CLIError(f"{arg}: folder {str(path.parent)!r} does not exist")
    return path


# ------------------------------------------------------------------------------------------------ measuring

def _plain(res: dict) -> dict:
    keep = ("ece", "image_ece", "image_ece_std", "mce", "nll", "brier", "accuracy", "confidence", "n_pixels",
            "n_images", "n_bins")
    out = {k: res[k] for k in keep if k in res}
    out["image_eces"] = [float(v) for v in np.asarray(res["image_eces"])]
    return out


def _write_json(path: Path, payload: dict) -> None:
    from segcal_lib.fileio import atomic_write

    with atomic_write(path, "w") as fh:
        json.dump(payload, fh, indent=1, default=float)


def _table(results: dict, miou: dict):
    import pandas as pd

    from segcal_lib.report import calibration_table

    table = calibration_table(results, miou)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        return table, table.to_string()


# ------------------------------------------------------------------------------------------------- commands


def cmd_calibrate(args) -> int:
    cal = open_store(args.cal, "--cal")
    test = open_store(args.test, "--test")
    _same_classes(cal, test, "--cal", "--test")
    names = _calibrators(args.calibrators, "--calibrators")
    json_path = _out_path(args.json, "--json", force=True) if args.json else None
    if test.meta.get("scores", "logits") != "logits" or cal.meta.get("scores", "logits") != "logits":
        raise CLIError("--cal and --test must hold logits, not probabilities")
    results, miou = {}, {}
    results["uncalibrated"], miou["uncalibrated"] = evaluate_store(test, None, args.bins)
    for name in names:
        results[name], miou[name] = evaluate_store(test, fit_calibrator(name, cal), args.bins)
    table, text = _table(results, miou)
    print(f"test store {args.test}: {len(test)} images, {test.num_classes} classes; calibrators fitted on {args.cal} "
          f"({len(cal)} images); ECE with {args.bins} equal-width bins, 95% bootstrap interval over images")
    print(text)
    if json_path is not None:
        _write_json(json_path, {"cal": str(args.cal), "test": str(args.test), "n_bins": args.bins,
                                "table": json.loads(table.reset_index().to_json(orient="records")),
                                "results": {k: {**_plain(v), "miou": miou[k]} for k, v in results.items()}})
        print(f"wrote {json_path}")
    return 0


def cmd_apply(args) -> int:
    from segcal_lib.logit_store import LogitStore

    cal = open_store(args.cal, "--cal")
    src = open_store(args.input, "--input")
    _same_classes(cal, src, "--cal", "--input")
    (name,) = _calibrators(args.calibrator, "--calibrator")[:1]
    out = _out_path(args.output, "--output")
    fitted = fit_calibrator(name, cal)
    names = src.names

    def batches():
        with torch.no_grad():
            for start, (lg, lb) in zip(range(0, len(src), DEFAULT_BATCH), src.iter_batches(DEFAULT_BATCH),
                                       strict=True):
                y = fitted(lg)
                yield (y.softmax(1) if args.probs else y), lb, names[start:start + len(lg)]

    meta = {"scores": "probs" if args.probs else "logits", "calibrator": name, "fitted_on": str(args.cal),
            "source": str(args.input), "settings": src.meta.get("settings")}
    store = LogitStore.write(out, batches(), len(src), class_names=src.meta.get("class_names"), meta=meta)
    print(f"wrote {store.path}: calibrated {'probabilities' if args.probs else 'logits'} of {len(store)} images "
          f"({name} fitted on {args.cal})")
    return 0


def cmd_evaluate(args) -> int:
    store = open_store(args.store, "STORE")
    json_path = _out_path(args.json, "--json", force=True) if args.json else None
    res, miou = evaluate_store(store, None, args.bins)
    label = store.meta.get("calibrator") or "stored"
    table, text = _table({label: res}, {label: miou})
    print(f"{args.store}: {len(store)} images, {store.num_classes} classes, {store.meta.get('scores', 'logits')}; "
          f"ECE with {args.bins} equal-width bins")
    print(text)
    if json_path is not None:
        _write_json(json_path, {"store": str(args.store), **_plain(res), "miou": miou})
        print(f"wrote {json_path}")
    return 0


def cmd_list(args) -> int:
    from segcal_lib.calibrators import list_calibrators

    print("\n".join(list_calibrators(args.pattern)))
    return 0


def cmd_split(args) -> int:
    from segcal_lib.data.splits import make_splits

    fractions = {}
    for part in args.fractions.split(","):
        key, _, value = part.partition("=")
        try:
            fractions[key.strip()] = float(value)
        except ValueError as exc:
            raise CLIError(f"--fractions must look like train=0.7,val=0.15,test=0.15, got {args.fractions!r}") from exc
    root = Path(args.root)
    if not root.is_dir():
        raise CLIError(f"ROOT: {str(root)!r} is not a folder")
    table = make_splits(root, fractions, seed=args.seed, group=args.group, overwrite=args.overwrite)
    counts = ", ".join(f"{k}: {len(v)}" for k, v in table.items())
    grouped = f", grouped by {args.group!r}" if args.group else ""
    print(f"wrote {root / 'splits.json'} ({counts}; seed {args.seed}{grouped})")
    return 0


def cmd_demo_folder(args) -> int:
    from PIL import Image

    from segcal_lib.data.synthetic import CLASS_NAMES, SyntheticScenes

    dest = _out_path(args.dest, "DEST")
    try:
        h, w = (int(v) for v in args.size.lower().split("x"))
    except ValueError as exc:
        raise CLIError(f"--size must look like 120x160 (H x W), got {args.size!r}") from exc
    if args.n < 3 or args.per_sequence < 1:
        raise CLIError(f"--n must be at least 3 and --per-sequence positive, got {args.n} and {args.per_sequence}")
    scenes = SyntheticScenes("train", n=args.n, size=(h, w))
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
    try:
        (tmp / "images").mkdir()
        (tmp / "labels").mkdir()
        for k in range(len(scenes)):
            s = scenes[k]
            stem = f"street{k // args.per_sequence:02d}_{k % args.per_sequence:03d}"
            img = (s.image.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
            Image.fromarray(img).save(tmp / "images" / f"{stem}.jpg", quality=95)
            Image.fromarray(s.label.cpu().numpy().astype(np.uint8), "L").save(tmp / "labels" / f"{stem}.png")
        (tmp / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n")
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"wrote {len(scenes)} images with labels and classes.txt ({len(CLASS_NAMES)} classes) to {dest}")
    return 0


def cmd_logits(args) -> int:
    from segcal_lib import pipeline
    from segcal_lib.config import get_profile
    from segcal_lib.dump import dump_logits
    from segcal_lib.logit_store import LogitStore

    root = Path(args.root)
    if not root.is_dir():
        raise CLIError(f"ROOT: {str(root)!r} is not a folder")
    out = Path(args.out)
    profile = get_profile()
    data = {"root": str(root)}
    if args.resize:
        data["resize"] = args.resize
    overrides = {k: v for k, v in (("iters", args.iters), ("model", args.model)) if v is not None}
    model, cfg = pipeline.get_model("folder", profile, data=data, progress=not args.quiet, **overrides)
    for split in [s.strip() for s in args.splits.split(",") if s.strip()]:
        spec = pipeline.data_spec("folder", split, profile, **{k: v for k, v in cfg.data.items()
                                                                if k not in ("name", "split", "identity")})
        path = out / split
        if path.exists():
            old = LogitStore(path).meta
            if old.get("model_key") == model.cache_key and old.get("data_spec") == spec:
                print(f"{path}: up to date ({len(old['names'])} images)")
                continue
            raise CLIError(f"--out: {str(path)!r} holds logits of another model or data; remove it or choose --out")
        out.mkdir(parents=True, exist_ok=True)
        store = dump_logits(model, pipeline.load_dataset(spec), path, progress=not args.quiet,
                            meta={"model_key": model.cache_key, "data_spec": spec})
        print(f"wrote {path}: {len(store)} images, {store.num_classes} classes")
    return 0


# ---------------------------------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segcal", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("calibrate", help="fit calibrators on one store, report calibration on another")
    p.add_argument("--cal", required=True, help="store of the calibration split (logits + labels)")
    p.add_argument("--test", required=True, help="store to evaluate on")
    p.add_argument("--calibrators", default="ts", help="comma-separated registry names, e.g. ts,dirs (default: ts)")
    p.add_argument("--json", help="also write the table and per-image ECEs to this JSON file")
    p.add_argument("--bins", type=int, default=10, help="equal-width ECE bins (default: 10, as in the paper)")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("apply", help="write calibrated logits or probabilities of a store to a new store")
    p.add_argument("--cal", required=True, help="store to fit the calibrator on")
    p.add_argument("--calibrator", default="ts", help="registry name (default: ts)")
    p.add_argument("--input", required=True, help="store to calibrate")
    p.add_argument("--output", required=True, help="new store to write (must not exist)")
    p.add_argument("--probs", action="store_true", help="write probabilities instead of calibrated logits")
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("evaluate", help="calibration metrics and mIoU of one store")
    p.add_argument("store", metavar="STORE")
    p.add_argument("--json", help="also write the metrics to this JSON file")
    p.add_argument("--bins", type=int, default=10)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("list", help="the registered calibrator names")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style pattern (default: *)")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("split", help="seeded train/val/test split of a folder, written to ROOT/splits.json")
    p.add_argument("root", metavar="ROOT")
    p.add_argument("--fractions", default="train=0.7,val=0.15,test=0.15")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--group", help="regular expression; images whose names share its first group stay together")
    p.add_argument("--overwrite", action="store_true", help="replace existing, different splits")
    p.set_defaults(func=cmd_split)

    p = sub.add_parser("logits", help="train (or load) the profile's model on ROOT's train split; store its logits")
    p.add_argument("root", metavar="ROOT")
    p.add_argument("--out", required=True, help="folder for one store per split (OUT/val, OUT/test)")
    p.add_argument("--splits", default="val,test")
    p.add_argument("--resize", help="e.g. pad:360x480 or short:360 (default: fit the profile's image size)")
    p.add_argument("--iters", type=int, help="training steps (default: the profile's)")
    p.add_argument("--model", help="model registry name (default: the profile's)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_logits)

    p = sub.add_parser("demo-folder", help="write a small folder of synthetic street scenes in the folder layout")
    p.add_argument("dest", metavar="DEST")
    p.add_argument("--n", type=int, default=48)
    p.add_argument("--size", default="120x160", help="HxW (default: 120x160)")
    p.add_argument("--per-sequence", type=int, default=8, help="frames per 'sequence' in the file names")
    p.set_defaults(func=cmd_demo_folder)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``segcal`` command; returns the exit status (2 for bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (CLIError, ValueError, FileNotFoundError) as exc:
        print(f"segcal {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
