"""Execute chapters top to bottom with their outputs saved, and time each one.

    python benchmarks/run_chapters.py chapters/04_capacity.ipynb ... --dataset camvid --out /tmp/segcal-out

``--dry-run`` checks the wiring on a CPU in minutes: it inserts, after the parameters cell, a cell that shrinks the
active profile's factor sweeps to tiny images, few steps and a handful of test images (nothing it measures means
anything). Without it the chapters run exactly as a reader runs them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]

# Shrinks the factor sweeps of whatever profile is active; only ever inserted by --dry-run.
DRY_RUN_CELL = """\
from dataclasses import replace as _replace
from segcal_lib import config as _config
from segcal_lib.analysis import factors as _factors
_name = _config.profile_name()
_config.PROFILES[_name] = _replace(_config.PROFILES[_name], n_train=8, n_val=4, n_test=6)
_s = _factors.FACTOR_SETTINGS[_name]
_crops = dict(zip(sorted(_s.crop_sizes), (16, 24, 32, 40)))  # ConvNeXt needs 32 pixels or more
_factors.FACTOR_SETTINGS[_name] = _replace(
    _s, image_size=(32, 40), batch_size=4, seeds=_s.seeds[:2], capacity_crop=_crops[_s.capacity_crop],
    crop_sizes=tuple(sorted(_crops.values())), scales=(0.75, 1.0, 1.25),
    steps=tuple(((m, _crops[c]), 20) for (m, c), _ in _s.steps), dataset_steps=())
print("DRY RUN: tiny factor settings", _factors.FACTOR_SETTINGS[_name])
"""


def run(path: Path, dataset: str, out: Path, dry_run: bool, timeout: int) -> dict:
    nb = nbformat.read(path, as_version=4)
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    params = next(i for i in code if nb.cells[i].source.lstrip().startswith("# Parameters"))
    nb.cells[params].source += f"\nDATASET = {dataset!r}  # set by benchmarks/run_chapters.py"
    if dry_run:
        nb.cells.insert(params + 1, nbformat.v4.new_code_cell(DRY_RUN_CELL))
    start = time.perf_counter()
    error = None
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
                       ).execute()
    except Exception as exc:  # keep the partly executed notebook: it shows where it failed
        error = f"{type(exc).__name__}: {str(exc)[-2000:]}"
    seconds = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out / f"{path.stem}-{dataset}.ipynb")
    return {"chapter": path.stem, "dataset": dataset, "seconds": round(seconds, 1), "error": error}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("chapters", nargs="+", type=Path)
    ap.add_argument("--dataset", default="synthetic", choices=["synthetic", "camvid"])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    args = ap.parse_args()
    results = []
    for path in args.chapters:
        results.append(run(path, args.dataset, args.out, args.dry_run, args.timeout))
        print(json.dumps(results[-1]), flush=True)
    with open(args.out / f"timings-{args.dataset}.json", "w") as fh:
        json.dump(results, fh, indent=1)
    return int(any(r["error"] for r in results))


if __name__ == "__main__":
    raise SystemExit(main())
