"""Streaming ECE: exactness at scale and throughput, side by side with torchmetrics, in one run.

Exactness: a stream whose exact ECE is known in closed form (two classes; every batch holds the same multiset of
confidences, one per bin, each with a fixed fraction of correct pixels), computed with Python fractions from the very
float32 numbers fed to both meters. Throughput: the same random logit batches through both, update + compute.

    python benchmarks/bench_metrics.py                 # CPU-sized defaults
    python benchmarks/bench_metrics.py --pixels 1e9    # exactness at 10^9 pixels (ours only past --tm-max-pixels)
"""

from __future__ import annotations

import argparse
import time
from fractions import Fraction

import torch

from segcal_lib.config import get_device
from segcal_lib.metrics import CalibrationMeter

N_BINS = 10


def exact_stream(batch_pixels: int, device):
    """One batch (probabilities (1, 2, 1, P) float32, labels (1, 1, P)) and the exact ECE of any number of copies."""
    conf = torch.tensor([0.05 + 0.1 * k for k in range(5, 10)], dtype=torch.float32)  # one confidence per upper bin
    frac_correct = [Fraction(k, 10) for k in (4, 6, 7, 9, 10)]  # deliberately off the confidences
    per = batch_pixels // len(conf)
    probs, labels, gap = [], [], Fraction(0)
    for c, a in zip(conf.tolist(), frac_correct, strict=True):
        n_right = int(a * per)
        probs.append(torch.tensor([c, 1 - c], dtype=torch.float32)[:, None].expand(2, per))
        lab = torch.ones(per, dtype=torch.long)
        lab[:n_right] = 0  # class 0 is predicted (c > 0.5): the first n_right pixels are right
        labels.append(lab)
        gap += abs(Fraction(n_right) - per * Fraction(c))  # |sum of confidences - number correct| in this bin
    p = torch.cat(probs, 1)[None, :, None].to(device)
    y = torch.cat(labels)[None, None].to(device)
    return p, y, float(gap / (per * len(conf)))


def bench_exactness(total_pixels: float, tm_max_pixels: float, device) -> None:
    batch = 2**22
    p, y, exact = exact_stream(batch, device)
    n_batches = max(1, int(total_pixels // p.shape[-1]))
    ours = CalibrationMeter(2, N_BINS, inputs="probs", classwise=False, validate=False)
    tm = _torchmetrics(2, device) if n_batches * p.shape[-1] <= tm_max_pixels else None
    flat_p, flat_y = p[0, :, 0].T.contiguous(), y.flatten()
    for _ in range(n_batches):
        ours.update(p, y)
        if tm is not None:
            tm.update(flat_p, flat_y)
    n = n_batches * p.shape[-1]
    print(f"\nExactness: {n:.3g} pixels, exact ECE = {exact:.9f} (closed form, {N_BINS} bins)")
    print(f"  segcal_lib    {ours.compute()['ece']:.9f}   error {abs(ours.compute()['ece'] - exact):.2e}")
    if tm is not None:
        v = tm.compute().item()
        print(f"  torchmetrics  {v:.9f}   error {abs(v - exact):.2e}")
    else:
        print(f"  torchmetrics  skipped above {tm_max_pixels:.3g} pixels (it stores every pixel: ~8 B/pixel)")


def _torchmetrics(num_classes, device):
    from torchmetrics.classification import MulticlassCalibrationError

    return MulticlassCalibrationError(num_classes=num_classes, n_bins=N_BINS, norm="l1", ignore_index=255).to(device)


def bench_speed(num_classes: int, shape: tuple[int, int, int], n_batches: int, device) -> None:
    g = torch.Generator(device="cpu").manual_seed(0)
    n, h, w = shape
    logits = (torch.randn(n, num_classes, h, w, generator=g) * 4).to(device)
    labels = torch.randint(0, num_classes, (n, h, w), generator=g)
    labels[:, :16] = 255
    labels = labels.to(device)
    px = n * h * w * n_batches

    def run(make, feed):
        meter = make()
        _sync(device)
        t = time.perf_counter()
        for _ in range(n_batches):
            feed(meter)
        meter.compute()
        _sync(device)
        return px / (time.perf_counter() - t) / 1e6

    rows = []
    for name, kw in [("segcal_lib float64", {}), ("segcal_lib float32", {"compute_dtype": torch.float32})]:
        rows.append((name, run(lambda kw=kw: CalibrationMeter(num_classes, N_BINS, classwise=False, **kw),
                               lambda m: m.update(logits, labels))))
    # torchmetrics wants (pixels, C) rows: the transpose is part of what a user of it pays for, so it is timed.
    rows.append(("torchmetrics (float32, stores pixels)",
                 run(lambda: _torchmetrics(num_classes, device),
                     lambda m: m.update(logits.permute(0, 2, 3, 1).reshape(-1, num_classes), labels.flatten()))))
    print(f"\nThroughput, C={num_classes}, batches of {n}x{h}x{w}, {n_batches} batches, {device} "
          f"(update + compute; both are given logits):")
    base = rows[-1][1]
    for name, mpx in rows:
        print(f"  {name:40s} {mpx:8.2f} Mpx/s   x{mpx / base:.2f} vs torchmetrics")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pixels", type=float, default=1.7e8, help="pixels streamed in the exactness run")
    ap.add_argument("--tm-max-pixels", type=float, default=1.7e8, help="largest stream given to torchmetrics")
    ap.add_argument("--batches", type=int, default=5, help="batches in the throughput run")
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    device = get_device(args.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    bench_exactness(args.pixels, args.tm_max_pixels, device)
    bench_speed(19, (2, 512, 1024), args.batches, device)
    bench_speed(150, (2, 256, 256), args.batches, device)


if __name__ == "__main__":
    main()
