#!/usr/bin/env python
"""Second pass over a folder with and without the decoded-image cache of ``FolderDataset``, in one run.

Reads every item of a generated folder twice: without the cache (decode + resize every time, what
``ImageFolderSegmentation`` does), then with it (first pass decodes and writes the cache, second pass reads arrays).
Prints the times and their ratio, for small JPEGs (480x360, no resize), large ones (1440x1080 resized to 480x360)
and, when it is on disk, CamVid's test split (PNG).

    python benchmarks/bench_decoded_cache.py
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

os.environ["SEGCAL_CACHE"] = tempfile.mkdtemp(prefix="segcal-bench-")  # a cold cache of its own

from segcal_lib.cli import main  # noqa: E402
from segcal_lib.data import FolderDataset, default_camvid_root  # noqa: E402


def read_all(ds) -> float:
    t = time.perf_counter()
    for i in range(len(ds)):
        ds[i]
    return time.perf_counter() - t


def compare(make, label: str) -> None:
    no_cache = read_all(make(False))
    cold = read_all(make(True))
    warm = read_all(make(True))
    print(f"{label}: {len(make(False))} images | decode every pass {no_cache:.2f} s | with cache: first pass "
          f"{cold:.2f} s, second pass {warm:.2f} s | second pass {no_cache / warm:.1f}x faster")


def run() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="segcal-bench-data-"))
    main(["demo-folder", str(tmp / "small"), "--n", "96", "--size", "360x480"])
    compare(lambda c: FolderDataset(tmp / "small", resize="pad:360x480", cache=c), "JPEG 480x360")
    main(["demo-folder", str(tmp / "large"), "--n", "48", "--size", "1080x1440"])
    compare(lambda c: FolderDataset(tmp / "large", resize="pad:360x480", cache=c), "JPEG 1440x1080 -> 480x360")
    cam = default_camvid_root()
    if (cam / "test").is_dir():
        compare(lambda c: FolderDataset(image_dir=cam / "test", label_dir=cam / "testannot",
                                        class_map={**{i: i for i in range(11)}, 11: 255}, cache=c),
                "CamVid test, PNG 480x360")


if __name__ == "__main__":
    run()
