"""Benchmark of the streaming calibration meters, side by side with what a user would otherwise pick, in one run.

Throughput and peak extra memory on the same batches (random logits x4, 16 rows of ignore label per image, 15
equal-width bins as in the recorded GPU figures): our :class:`~segcal_lib.metrics.CalibrationMeter` in each precision
with and without class-wise bins, with its defaults on its automatic backend and on the PyTorch ``fused`` one,
torchmetrics' ``MulticlassCalibrationError``, a naive streaming histogram (eager softmax, max, bincount) and the time
to read the logits once (the floor); ratios are against torchmetrics, and the timed repeats go round the methods so
that a change of load hits all of them alike. Then the peak extra memory of the default meter over a short and a
long stream (the same when it does not grow with the pixels), and exactness: a stream whose ECE is known in closed
form, through our meter up to ``--exact-pixels`` and through torchmetrics up to ``--tm-max-pixels``. ``--drift``
runs only exactness, up to 10^9 pixels, adding the full default meter on a repeated batch of logits (its reference
is that batch's float64 value). Optionally, fit times of calibrators (``--fits``).

    python -m segcal_lib.bench --size cpu             # two CPU cores: C=19 2x512x1024, C=150 2x256x256
    python -m segcal_lib.bench                        # on a GPU: the sizes of the recorded H200 figures
    python -m segcal_lib.bench --size tiny            # seconds; what the test suite runs
    python -m segcal_lib.bench --exact-pixels 1e9     # exactness after 10^9 pixels (ours alone past torchmetrics)
    python -m segcal_lib.bench --drift                # only exactness: 10^6..10^9 pixels, incl. the full meter

Every function returns plain records (lists of dicts) so that a chapter can tabulate them.
"""

from __future__ import annotations

import argparse
import ctypes
import math
import os
import time
import tracemalloc
from fractions import Fraction

import torch

from segcal_lib.config import get_device
from segcal_lib.metrics import CalibrationMeter

N_BINS = 15
IGNORE = 255
# The clock of every timing: wall time by default; ``--clock cpu`` (process CPU time) on a machine shared with others.
_clock = time.perf_counter
# (num_classes, (images, height, width) per batch, batches) per size; "anchors" are the recorded GPU workloads.
SIZES = {
    "anchors": [(19, (2, 1024, 2048), 40), (150, (8, 512, 512), 40)],
    "cpu": [(19, (2, 512, 1024), 4), (150, (2, 256, 256), 4)],
    "tiny": [(19, (2, 32, 48), 2), (150, (1, 24, 16), 2)],
}
# Our meter in each configuration: (name, keyword arguments).
OURS = [
    ("ours exact, pooled", dict(precision="exact", classwise=False)),
    ("ours fast, pooled", dict(precision="fast", classwise=False)),
    ("ours exact, full", dict(precision="exact", classwise=True)),
    ("ours fast, full", dict(precision="fast", classwise=True)),
]


# ------------------------------------------------------------------------------------------------------- memory
class PeakMemory:
    """Peak memory allocated above the level at entry, in bytes (``.extra`` after the block).

    CUDA: the caching allocator's peak. CPU on Linux: the growth of the process's peak resident set (reset through
    ``/proc/self/clear_refs``, after glibc has returned its free memory), which sees torch's allocations; elsewhere
    ``tracemalloc``, which sees only Python's.
    """

    def __init__(self, device: torch.device):
        self.device, self.extra, self.how = device, math.nan, ""

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start, self.how = torch.cuda.memory_allocated(self.device), "cuda max_memory_allocated"
        elif _glibc_trim() and _linux_peak_rss_reset():
            self._start, self.how = _rss("VmRSS"), "peak RSS"
        else:
            tracemalloc.start()
            self.how = "tracemalloc (Python objects only)"
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.extra = torch.cuda.max_memory_allocated(self.device) - self._start
        elif self.how == "peak RSS":
            self.extra = _rss("VmHWM") - self._start
        else:
            self.extra = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        return False


def _rss(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"{field} not in /proc/self/status")


def _glibc_trim() -> bool:
    """Give the memory glibc holds free back to the system, so that reusing it shows up in the resident set again.

    Without this a method run after another would reuse the pages its predecessor freed and show no peak of its own.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        return True
    except (OSError, AttributeError):
        return False


def _linux_peak_rss_reset() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident set
        return True
    except OSError:
        return False


# -------------------------------------------------------------------------------------------------- competitors
def _torchmetrics_ece(num_classes: int, device, n_bins: int = N_BINS):
    try:
        from torchmetrics.classification import MulticlassCalibrationError
    except ImportError:
        return None
    return MulticlassCalibrationError(num_classes=num_classes, n_bins=n_bins, norm="l1",
                                      ignore_index=IGNORE).to(device)


class NaiveHistogram:
    """The straightforward streaming histogram: softmax, max, bin, three ``bincount``s (float64 sums)."""

    def __init__(self, n_bins: int = N_BINS):
        self.n_bins = n_bins
        self.sums = None

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        conf, pred = logits.softmax(1).max(1)
        keep = labels != IGNORE
        conf, hit = conf[keep].double(), (pred[keep] == labels[keep]).double()
        k = (conf * self.n_bins).long().clamp_(max=self.n_bins - 1)
        s = torch.stack([torch.bincount(k, weights=w, minlength=self.n_bins) for w in (torch.ones_like(conf),
                                                                                      conf, hit)])
        self.sums = s if self.sums is None else self.sums + s

    def compute(self) -> dict:
        count, conf, hits = self.sums
        return {"ece": float((conf - hits).abs().sum() / count.sum())}


class ReadOnce:
    """The floor: read every logit once (a sum) and do nothing else."""

    def __init__(self):
        self.total = 0.0

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.total = self.total + logits.sum(dtype=torch.float32)

    def compute(self) -> dict:
        return {"ece": math.nan}


class _TorchmetricsAdapter:
    """torchmetrics wants (pixels, C) rows: the transpose is part of what its user pays, so it is timed."""

    def __init__(self, metric):
        self.metric = metric

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        c = logits.shape[1]
        self.metric.update(logits.permute(0, 2, 3, 1).reshape(-1, c), labels.reshape(-1))

    def compute(self) -> dict:
        return {"ece": float(self.metric.compute())}


class _OursAdapter:
    def __init__(self, meter: CalibrationMeter):
        self.meter = meter

    def update(self, logits, labels):
        self.meter.update(logits, labels)

    def compute(self):
        return self.meter.compute()


# --------------------------------------------------------------------------------------------------- throughput
def make_batches(num_classes: int, shape: tuple[int, int, int], n_distinct: int, device, seed: int = 0):
    """``n_distinct`` batches of random logits x4 (N, C, H, W) float32 and labels (N, H, W) with 16 ignored rows."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    n, h, w = shape
    out = []
    for _ in range(n_distinct):
        logits = torch.randn(n, num_classes, h, w, generator=g) * 4
        labels = torch.randint(0, num_classes, (n, h, w), generator=g)
        labels[:, : min(16, h)] = IGNORE
        out.append((logits.to(device), labels.to(device)))
    return out


def methods(num_classes: int, device, n_bins: int = N_BINS, compile_naive: bool = False) -> dict:
    """Name -> factory of a fresh streaming metric with ``update(logits, labels)`` and ``compute()``."""
    out = {"read once (floor)": ReadOnce, "naive streaming histogram": lambda: NaiveHistogram(n_bins)}
    if compile_naive:
        out["naive histogram, torch.compile"] = lambda: _compiled_naive(n_bins)
    if _torchmetrics_ece(num_classes, device) is not None:
        out["torchmetrics"] = lambda: _TorchmetricsAdapter(_torchmetrics_ece(num_classes, device, n_bins))
    for name, kw in OURS:
        out[name] = lambda kw=kw: _OursAdapter(CalibrationMeter(num_classes, n_bins, validate=False, **kw))
    out["ours, defaults (validated)"] = lambda: _OursAdapter(CalibrationMeter(num_classes, n_bins))
    # The same meter on the PyTorch backend that "auto" falls back to without a C compiler (and uses on GPUs).
    out["ours, defaults, fused backend"] = lambda: _OursAdapter(CalibrationMeter(num_classes, n_bins,
                                                                                  backend="fused"))
    return out


def _compiled_naive(n_bins: int) -> NaiveHistogram:
    meter = NaiveHistogram(n_bins)
    meter.update = torch.compile(meter.update, dynamic=True)
    return meter


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _stream(meter, batches, n_batches: int, device) -> tuple[float, float, float]:
    """Feed ``n_batches`` batches and compute: (seconds in all, seconds of the first update, ECE)."""
    _sync(device)
    t0 = _clock()
    for i in range(n_batches):
        meter.update(*batches[i % len(batches)])
        if i == 0:
            _sync(device)
            first = _clock() - t0
    ece = meter.compute()["ece"]
    _sync(device)
    return _clock() - t0, first, ece


def bench_throughput(num_classes: int, shape: tuple[int, int, int], n_batches: int, device, repeats: int = 3,
                     n_bins: int = N_BINS, compile_naive: bool = False, only: list[str] | None = None) -> list[dict]:
    """Every method over the same ``n_batches`` batches (two distinct ones, alternated), update + compute; the
    ``repeats`` go round the methods in turn.

    Returns one record per method: ``method``, ``mpx_per_s`` (best of ``repeats``), ``first_call_s`` (the first
    update of the first repeat, warm-up included: compilation for a compiled method), ``ece``, ``x_torchmetrics``
    (throughput ratio), ``x_floor`` (fraction of the read-once floor) and the workload. Memory: :func:`add_memory`.
    """
    batches = make_batches(num_classes, shape, min(2, n_batches), device)
    pixels = n_batches * math.prod(shape)
    makers = {name: make for name, make in methods(num_classes, device, n_bins, compile_naive).items()
              if only is None or name in only}
    # Repeats go round the methods, so that a change of load on a shared machine hits all of them alike.
    runs: dict = {name: [] for name in makers}
    for _ in range(repeats):
        for name, make in makers.items():
            runs[name].append(_stream(make(), batches, n_batches, device))
    records = []
    for name, rs in runs.items():
        records.append({"num_classes": num_classes, "batch": "x".join(map(str, shape)), "batches": n_batches,
                        "pixels": pixels, "method": name, "mpx_per_s": pixels / min(r[0] for r in rs) / 1e6,
                        "first_call_s": rs[0][1], "ece": rs[0][2], "device": str(device),
                        "peak_extra_mb": math.nan, "bytes_per_pixel": math.nan})
    tm = next((r["mpx_per_s"] for r in records if r["method"] == "torchmetrics"), math.nan)
    floor = next((r["mpx_per_s"] for r in records if r["method"] == "read once (floor)"), math.nan)
    for r in records:
        r["x_torchmetrics"], r["x_floor"] = r["mpx_per_s"] / tm, r["mpx_per_s"] / floor
    return records


def add_memory(records: list[dict], device, n_bins: int = N_BINS) -> list[dict]:
    """Fill ``peak_extra_mb`` and ``bytes_per_pixel`` of throughput records with one more, untimed, stream each.

    Kept apart from the timing so that measuring cannot slow what is timed.
    """
    by_workload: dict = {}
    for r in records:
        by_workload.setdefault((r["num_classes"], r["batch"], r["batches"]), []).append(r)
    for (c, batch, n_batches), recs in by_workload.items():
        batches = make_batches(c, tuple(int(v) for v in batch.split("x")), min(2, n_batches), device)
        makers = methods(c, device, n_bins, compile_naive=any("compile" in r["method"] for r in recs))
        for r in recs:
            meter = makers[r["method"]]()
            with PeakMemory(device) as mem:
                _stream(meter, batches, n_batches, device)
            del meter
            r["peak_extra_mb"], r["bytes_per_pixel"] = mem.extra / 2**20, mem.extra / r["pixels"]
    return records


# ---------------------------------------------------------------------------------------------------- exactness
def exact_stream(batch_pixels: int, device):
    """One batch (probabilities (1, 2, 1, P) float32, labels (1, 1, P)) and the exact ECE of any number of copies.

    Two classes; every batch holds the same multiset of confidences, one per upper bin, each with a fixed fraction
    of correct pixels; the exact ECE is computed with Python fractions from the very float32 numbers fed to the
    meters. 10 equal-width bins.
    """
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
        gap += abs(n_right - per * Fraction(c))  # |number correct - sum of confidences| in this bin
    p = torch.cat(probs, 1)[None, :, None].to(device)
    y = torch.cat(labels)[None, None].to(device)
    return p, y, float(gap / (per * len(conf)))


def bench_exactness(pixel_counts: list[float], tm_max_pixels: float, device, batch_pixels: int = 2**22,
                    precisions: tuple[str, ...] = ("exact", "fast")) -> list[dict]:
    """ECE of the closed-form stream after each of ``pixel_counts`` (rounded to whole batches), one stream each.

    Returns one record per (pixels, method): ``pixels``, ``method``, ``ece``, ``exact``, ``abs_error``,
    ``peak_extra_mb`` (the whole stream) and ``seconds``. torchmetrics runs only up to ``tm_max_pixels`` (it keeps
    every pixel).
    """
    p, y, exact = exact_stream(batch_pixels, device)
    flat_p, flat_y = p[0, :, 0].T.contiguous(), y.flatten()
    records = []
    for total in pixel_counts:
        n_batches = max(1, int(total // p.shape[-1]))
        n = n_batches * p.shape[-1]
        runs = {f"ours {prec}": (CalibrationMeter(2, 10, inputs="probs", classwise=False, validate=False,
                                                  precision=prec), lambda m: m.update(p, y)) for prec in precisions}
        tm = _torchmetrics_ece(2, device, 10)
        if tm is not None and n <= tm_max_pixels:
            runs["torchmetrics"] = (tm, lambda m: m.update(flat_p, flat_y))
        for name, (meter, feed) in runs.items():
            with PeakMemory(device) as mem:
                t0 = time.perf_counter()
                for _ in range(n_batches):
                    feed(meter)
                out = meter.compute()
                v = float(out["ece"] if isinstance(out, dict) else out)
                _sync(device)
                secs = time.perf_counter() - t0
            records.append({"pixels": n, "method": name, "ece": v, "exact": exact, "abs_error": abs(v - exact),
                            "peak_extra_mb": mem.extra / 2**20, "seconds": secs})
            del meter
    return records


def memory_vs_stream_length(num_classes: int, shape: tuple[int, int, int], device, lengths=(2, 8),
                            n_bins: int = N_BINS) -> list[dict]:
    """Peak extra memory of our default meter over streams of ``lengths`` batches (the same batches, alternated).

    Returns one record per length: ``batches``, ``pixels``, ``peak_extra_mb`` and ``batch_mb`` (one batch of
    logits): a meter whose memory does not depend on the number of pixels shows the same peak for every length.
    """
    batches = make_batches(num_classes, shape, 2, device)
    batch_mb = batches[0][0].numel() * batches[0][0].element_size() / 2**20
    records = []
    for n_batches in lengths:
        meter = CalibrationMeter(num_classes, n_bins)
        with PeakMemory(device) as mem:
            _stream(_OursAdapter(meter), batches, n_batches, device)
        del meter
        records.append({"num_classes": num_classes, "batches": n_batches, "pixels": n_batches * math.prod(shape),
                        "peak_extra_mb": mem.extra / 2**20, "batch_mb": batch_mb})
    return records


DRIFT_KEYS = ("ece", "image_ece", "mce", "classwise_ece", "nll", "brier", "accuracy")


def bench_drift(checkpoints: list[float], device, num_classes: int = 19, shape: tuple[int, int, int] = (2, 512, 1024),
                precisions: tuple[str, ...] = ("exact", "fast"), n_bins: int = 10) -> list[dict]:
    """Drift of the full default meter (validated, class-wise, image-wise, NLL, Brier) over a long stream.

    The stream repeats one batch of random logits, so every per-bin sum after ``k`` batches is ``k`` times the
    one-batch sum and every metric keeps its one-batch value: the reference is that value, computed once by the
    float64 ``backend="reference"`` meter. One stream per precision, read at each of ``checkpoints`` pixels
    (rounded up to whole batches). Returns one record per (precision, checkpoint): ``pixels``, ``method``,
    ``<metric>_error`` (absolute difference to the reference) for each of ``DRIFT_KEYS``, ``max_error``,
    ``seconds`` and ``peak_extra_mb`` (from the start of the stream).
    """
    (logits, labels), = make_batches(num_classes, shape, 1, device, seed=2)
    ref = CalibrationMeter(num_classes, n_bins, backend="reference", precision="exact").update(logits, labels)
    ref = ref.compute()
    per_batch = labels.numel()
    stops = sorted({max(1, math.ceil(px / per_batch)) for px in checkpoints})
    records = []
    for precision in precisions:
        meter = CalibrationMeter(num_classes, n_bins, precision=precision)
        done, t0 = 0, time.perf_counter()
        with PeakMemory(device) as mem:
            for stop in stops:
                while done < stop:
                    meter.update(logits, labels)
                    done += 1
                res = meter.compute()
                _sync(device)
                errors = {f"{k}_error": abs(res[k] - ref[k]) for k in DRIFT_KEYS}
                records.append({"pixels": done * per_batch, "method": f"ours {precision}", **errors,
                                "max_error": max(errors.values()), "seconds": time.perf_counter() - t0,
                                "num_classes": num_classes})
        for r in records[-len(stops):]:
            r["peak_extra_mb"] = mem.extra / 2**20
        del meter
    return records


# ---------------------------------------------------------------------------------------------- calibrator fits
def bench_calibrator_fits(names=("ts", "dirs", "selective"), pixel_counts=(1e6, 1e7), num_classes: int = 19,
                          device=None) -> list[dict]:
    """Seconds to fit each calibrator on synthetic logits of ``pixel_counts`` pixels.

    HOOK (issue #13, item 3, calibrator fitting at scale): uses ``make_calibrator(name).fit(logits (N, C, H, W),
    labels (N, H, W))`` from ``segcal_lib.calibrators``; names that are not registered, or the whole package when it
    cannot be imported, are skipped with a printed message.
    """
    try:
        from segcal_lib.calibrators import list_calibrators, make_calibrator
    except ImportError as err:
        print(f"calibrator fits: skipped (segcal_lib.calibrators is not importable here: {err})")
        return []
    missing = [n for n in names if not list_calibrators(n)]
    if missing:
        print(f"calibrator fits: {missing} skipped (not registered; registered: {list_calibrators()})")
    names = [n for n in names if n not in missing]
    device = device or torch.device("cpu")
    records = []
    for px in pixel_counts:
        side = 256
        n_img = max(1, int(px) // (side * side))
        (logits, labels), = make_batches(num_classes, (n_img, side, side), 1, device, seed=1)
        for name in names:
            _sync(device)
            t0 = time.perf_counter()
            make_calibrator(name).fit(logits, labels)
            _sync(device)
            records.append({"calibrator": name, "pixels": n_img * side * side, "num_classes": num_classes,
                            "fit_s": time.perf_counter() - t0, "device": str(device)})
    return records


# ------------------------------------------------------------------------------------------------------ recorded
# Figures measured on machines a reader may not have, copied from the project's reference notes (anchors.md) with
# their date and hardware. Pooled top-label ECE, 15 bins, random logits x4, 16 rows of ignore label per image.
RECORDED_GPU = {
    "date": "2026-11-29", "hardware": "1x NVIDIA H200", "stream": "40 batches, float32 logits",
    "versions": "torchmetrics 1.9 (other versions not recorded)",
    "rows": [
        {"num_classes": 19, "batch": "2x1024x2048", "stream_mpx": 168, "floor_gpx_s": 45.0, "naive_eager_gpx_s": 2.7,
         "naive_compiled_gpx_s": 2.2, "torchmetrics_gpx_s": 0.47, "torchmetrics_extra_gb": 5.3,
         "torchmetrics_b_per_px": 31},
        {"num_classes": 150, "batch": "8x512x512", "stream_mpx": 84, "floor_gpx_s": 6.6, "naive_eager_gpx_s": 0.48,
         "naive_compiled_gpx_s": 1.05, "torchmetrics_gpx_s": 0.21, "torchmetrics_extra_gb": 4.3,
         "torchmetrics_b_per_px": 51},
    ],
}
# torchmetrics 1.9 on a growing stream of the same workload (float32 accumulation); the float64 value is 0.631161.
RECORDED_DRIFT = {"exact": 0.631161, "rows": [(4.2e6, 0.631327), (16.8e6, 0.633438), (67.1e6, 0.638769),
                                              (167.8e6, 0.616970)]}


def chapter_exercises(fast_pooled_x19: float):
    """The appendix chapter's checked exercises; ``fast_pooled_x19`` is this run's speed-up of ``ours fast, pooled``
    over torchmetrics at C=19, read from the throughput table."""
    from segcal_lib.exercises import Exercise, numeric

    return [
        Exercise("ch12.speedup", "From the throughput table, how many times torchmetrics' throughput does "
                 "`ours fast, pooled` reach at C=19 in this run? (within 10%)",
                 numeric(fast_pooled_x19, rel_tol=0.1, explain="read the `x torchmetrics` column at C=19"),
                 "Find the row `ours fast, pooled` in the C=19 table.",
                 f"{fast_pooled_x19:.2f}, the ratio printed in the table.", right=fast_pooled_x19,
                 wrong=3 * fast_pooled_x19 + 1),
        Exercise("ch12.bytes", "torchmetrics keeps, for every pixel, its confidence and whether it is correct, both as "
                 "float32. How many bytes per pixel is that, before any temporary?",
                 numeric(8, abs_tol=0.5, explain="two float32 numbers of 4 bytes each"),
                 "What does one float32 cost?", "8 bytes: two float32 values per pixel.", right=8, wrong=4),
        Exercise("ch12.above_edge", "The class-wise pass scatters only probabilities of at least 1/B into bins. "
                 "With B = 10 bins and C = 19 classes, at most how many classes of one pixel can have p >= 1/B?",
                 numeric(10, abs_tol=0.5, explain="the probabilities of a pixel sum to 1"),
                 "Add up B probabilities of exactly 1/B.",
                 "10: the probabilities sum to 1, so at most B = 10 of them reach 1/B (all of them exactly 1/10).",
                 right=10, wrong=19),
    ]


# ------------------------------------------------------------------------------------------------------ printing
def format_throughput(records: list[dict]) -> str:
    r0 = records[0]
    lines = [f"C={r0['num_classes']}, batches of {r0['batch']} ({r0['batches']} batches, {r0['pixels'] / 1e6:.3g} M "
             f"pixels), {r0['device']}, update + compute, {N_BINS} bins",
             f"  {'method':32s} {'Mpx/s':>9s} {'x torchmetrics':>15s} {'x floor':>8s} {'peak extra MB':>14s} "
             f"{'B/pixel':>8s} {'first call s':>12s} {'ECE':>10s}"]
    for r in records:
        lines.append(f"  {r['method']:32s} {r['mpx_per_s']:9.2f} {r['x_torchmetrics']:15.2f} {r['x_floor']:8.3f} "
                     f"{r['peak_extra_mb']:14.1f} {r['bytes_per_pixel']:8.2f} {r['first_call_s']:12.3f} "
                     f"{r['ece']:10.6f}")
    return "\n".join(lines)


def format_exactness(records: list[dict]) -> str:
    lines = [f"Exactness: closed-form stream, exact ECE = {records[0]['exact']:.12f} (10 bins)",
             f"  {'pixels':>10s} {'method':14s} {'ECE':>16s} {'abs error':>10s} {'peak extra MB':>14s} {'s':>7s}"]
    for r in records:
        lines.append(f"  {r['pixels']:10.3g} {r['method']:14s} {r['ece']:16.12f} {r['abs_error']:10.2e} "
                     f"{r['peak_extra_mb']:14.1f} {r['seconds']:7.1f}")
    return "\n".join(lines)


def format_memory(records: list[dict]) -> str:
    r0 = records[0]
    parts = [f"{r['peak_extra_mb']:.1f} MB over {r['batches']} batches ({r['pixels'] / 1e6:.3g} M pixels)"
             for r in records]
    return (f"Peak extra memory of ours, defaults, C={r0['num_classes']}: " + ", ".join(parts)
            + f"; one batch of logits is {r0['batch_mb']:.1f} MB")


def format_drift(records: list[dict]) -> str:
    lines = [f"Drift: one batch of C={records[0]['num_classes']} logits repeated, full default meter, against the "
             f"float64 reference meter on that batch (10 bins)",
             f"  {'pixels':>10s} {'method':12s} " + " ".join(f"{k:>14s}" for k in DRIFT_KEYS)
             + f" {'peak extra MB':>14s} {'s':>7s}"]
    for r in records:
        lines.append(f"  {r['pixels']:10.3g} {r['method']:12s} "
                     + " ".join(f"{r[k + '_error']:14.2e}" for k in DRIFT_KEYS)
                     + f" {r['peak_extra_mb']:14.1f} {r['seconds']:7.1f}")
    return "\n".join(lines)


def machine_line(device) -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{os.cpu_count()} CPU cores"
    return (f"device {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}, "
            f"load average {load:.2f}")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m segcal_lib.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="cpu, cuda, ... (default: the library's choice)")
    ap.add_argument("--size", choices=sorted(SIZES), default=None,
                    help="workloads: anchors (GPU default), cpu (CPU default), tiny (seconds)")
    ap.add_argument("--small", action="store_true", help="same as --size cpu")
    ap.add_argument("--classes", type=int, nargs="*", default=None, help="only these class counts (19, 150)")
    ap.add_argument("--batches", type=int, default=None, help="batches per stream (default: the size's)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats; the best is kept")
    ap.add_argument("--compile", action="store_true", help="add the naive histogram under torch.compile")
    ap.add_argument("--exact-pixels", type=float, nargs="*", default=None,
                    help="pixel counts of the exactness run (default 4.2e6 1.7e8; tiny: 4e5)")
    ap.add_argument("--tm-max-pixels", type=float, default=1.7e8, help="largest stream given to torchmetrics")
    ap.add_argument("--fits", action="store_true", help="also time calibrator fits (ts, dirs, selective)")
    ap.add_argument("--drift", type=float, nargs="*", default=None, metavar="PIXELS",
                    help="only the exactness runs, up to these pixel counts (default 1e6 1e7 1e8 1e9): the "
                         "closed-form stream and the full default meter on a repeated batch of C=19 logits")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall time, or the process's CPU time (steadier on a machine shared with others; with "
                         "--threads 1 it is the work done)")
    args = ap.parse_args(argv)
    global _clock
    _clock = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    device = get_device(args.device)
    size = "cpu" if args.small else args.size or ("anchors" if device.type == "cuda" else "cpu")
    print(machine_line(device), f"clock {args.clock}")
    out = {"throughput": [], "memory": [], "exactness": [], "drift": [], "fits": []}
    tiny = size == "tiny"
    if args.drift is not None:
        checkpoints = args.drift or ([1e5, 4e5] if tiny else [1e6, 1e7, 1e8, 1e9])
        out["exactness"] = bench_exactness(checkpoints, args.tm_max_pixels, device,
                                           batch_pixels=2**16 if tiny else 2**22)
        print("\n" + format_exactness(out["exactness"]), flush=True)
        c, shape, _ = SIZES[size][0]
        out["drift"] = bench_drift(checkpoints, device, c, shape)
        print("\n" + format_drift(out["drift"]), flush=True)
        print(f"\n{machine_line(device)}")
        return out
    for c, shape, n_batches in SIZES[size]:
        if not args.classes or c in args.classes:
            out["throughput"] += bench_throughput(c, shape, args.batches or n_batches, device, args.repeats,
                                                  compile_naive=args.compile)
    add_memory(out["throughput"], device)
    for c in dict.fromkeys(r["num_classes"] for r in out["throughput"]):
        print("\n" + format_throughput([r for r in out["throughput"] if r["num_classes"] == c]), flush=True)
    for c, shape, _ in SIZES[size]:
        if not args.classes or c in args.classes:
            recs = memory_vs_stream_length(c, shape, device)
            out["memory"] += recs
            print(format_memory(recs), flush=True)
    pixels = args.exact_pixels if args.exact_pixels is not None else ([4e5] if tiny else [4.2e6, 1.7e8])
    if pixels:
        recs = bench_exactness(pixels, args.tm_max_pixels, device, batch_pixels=2**16 if tiny else 2**22)
        print("\n" + format_exactness(recs), flush=True)
        out["exactness"] = recs
    if args.fits:
        out["fits"] = bench_calibrator_fits(pixel_counts=(1e5,) if tiny else (1e6, 1e7), device=device)
        for r in out["fits"]:
            print(f"  fit {r['calibrator']:10s} {r['pixels']:10.3g} px  {r['fit_s']:7.2f} s")
    print(f"\n{machine_line(device)}")
    return out


if __name__ == "__main__":
    main()
