"""The native backend of :class:`~segcal_lib.metrics.CalibrationMeter` (``backend="native"``): one C pass per pixel.

Every per-pixel term the meter needs (max, first arg-max, ``exp(x - max)`` and its sums, the label's
log-probability, the Brier score, the bin of the confidence and of each class probability) is computed in one pass
over the scores, tile by tile (128 pixels x C classes, in the cache), and reduced at once into float64 per-bin sums.
The same pass screens the inputs: it counts pixels with a non-finite score and labels outside ``[0, C)``, so that
the meter validates a batch without reading it again (see :func:`segcal_lib.checks.check_screened`).

Why C, and how it is built (measured with ``python -m segcal_lib.bench`` on two CPU cores)
-----------------------------------------------------------------------------------------
- Eager PyTorch needs about ten passes over the (C, pixels) scores for the full meter (max, exp, sums, arg-max,
  class-wise probabilities, the compaction of those that leave bin 0), each a round trip through memory, and the
  finiteness check alone was a quarter of the time. ``torch.compile`` (Inductor) compiled for ~14 s in a fresh
  process and did not vectorise the arg-max and the scatters.
- A ~150-line C kernel, compiled by the system's C compiler on first use (about a second) and cached under
  :func:`segcal_lib.config.cache_dir` ``("native")`` keyed by its source, flags and CPU, vectorises the per-class
  loops (``exp`` as a polynomial, so no library call stops the vectoriser) and does the rest per pixel.
- Threads: the pixels are split between ``torch.get_num_threads()`` Python threads; ctypes releases the GIL.
- Without a C compiler (or on a GPU) the meter uses :mod:`segcal_lib.metrics_fused` instead (``backend="auto"``);
  :func:`native_status` says why. The kernel is also set aside when a small self-test against the fused pass fails
  on this machine, and ``SEGCAL_NATIVE=0`` switches it off.

Precision: ``exact`` computes the per-pixel terms in float64 (``exp`` to within an ulp or two of the C library's),
``fast`` in float32; both accumulate in float64, as the other backends do, and bin by the same rule
(:func:`segcal_lib.metrics_fused.bin_index`).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor

import torch

from segcal_lib.config import cache_dir

__all__ = ["available", "calibration_sums", "native_status"]

_FLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-shared"]
_TP = 128  # pixels per tile, as in the C source
# Below this many pixels per batch one thread does it all: starting threads would cost more than it saves.
_MIN_PIXELS_PER_THREAD = 2**14

_COMMON = r"""
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define TP 128  /* pixels per tile: the C x TP terms stay in the L1/L2 cache */

/* exp(x) for x <= 0 without a library call, so that the loops vectorise: Cody-Waite reduction x = k ln2 + r,
   |r| <= ln2/2, a Taylor polynomial (error far below an ulp), and 2^k from the exponent bits. Below the smallest
   normal result it returns 0. NaN in, NaN or 0 out: non-finite scores are screened separately. */
static inline double exp_d(double x) {
    const double shift = 0x1.8p52, log2e = 1.4426950408889634, ln2hi = 0x1.62e42fee00000p-1,
                 ln2lo = 0x1.a39ef35793c76p-33;
    double xc = x < -708.0 ? -708.0 : x;
    double kd = xc * log2e + shift;
    union { double f; int64_t i; } u = {.f = kd};
    int64_t ki = u.i;
    kd -= shift;
    double r = (xc - kd * ln2hi) - kd * ln2lo;
    double p = 1.0 / 6227020800.0;
    p = p * r + 1.0 / 479001600.0; p = p * r + 1.0 / 39916800.0; p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0; p = p * r + 1.0 / 40320.0; p = p * r + 1.0 / 5040.0; p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0; p = p * r + 1.0 / 24.0; p = p * r + 1.0 / 6.0; p = p * r + 0.5; p = p * r + 1.0;
    p = p * r + 1.0;
    int64_t bits = (int64_t)((uint64_t)(ki + 1023) << 52);
    union { int64_t i; double f; } s = {.i = bits};
    double scale = s.f;
    return x < -708.0 ? 0.0 : p * scale;
}

static inline float exp_f(float x) {
    const float shift = 0x1.8p23f, log2e = 1.44269504f, ln2hi = 0x1.62e400p-1f, ln2lo = 0x1.7f7d1cp-20f;
    float xc = x < -87.0f ? -87.0f : x;
    float kf = xc * log2e + shift;
    union { float f; int32_t i; } u = {.f = kf};
    int32_t ki = u.i;
    kf -= shift;
    float r = (xc - kf * ln2hi) - kf * ln2lo;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f; p = p * r + 1.0f / 120.0f; p = p * r + 1.0f / 24.0f; p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f; p = p * r + 1.0f; p = p * r + 1.0f;
    int32_t bits = (int32_t)((uint32_t)(ki + 127) << 23);
    union { int32_t i; float f; } s = {.i = bits};
    float scale = s.f;
    return x < -87.0f ? 0.0f : p * scale;
}

/* Bin k with edges[k] <= v < edges[k+1], the last bin closed: the rule of segcal_lib.metrics_fused.bin_index. */
static inline int64_t bin_f(float v, int64_t nb, const double *edges) {
    (void)edges;
    int64_t k = (int64_t)((double)v * nb);
    return k < 0 ? 0 : k > nb - 1 ? nb - 1 : k;
}
static inline int64_t bin_d(double v, int64_t nb, const double *edges) {
    int64_t k = (int64_t)(v * nb);
    k = k < 0 ? 0 : k > nb - 1 ? nb - 1 : k;
    k -= v < edges[k];
    k += (k < nb - 1) && (v >= edges[k + 1]);
    return k;
}

/* out layout (float64): per_image[N][3][B] (count, sum of confidences, hits), then cw[3][C][B] (count, sum of p,
   hits), then totals[C] (sum of p_k), then nll, brier. flags (int64): [pixels with a non-finite score, bad labels].
   Bin 0 of the class-wise count and sum is left to the caller (totals minus the other bins). */
"""

# The pass itself, instantiated below for each (input dtype, dtype of the per-pixel terms).
_KERNEL = r"""
void @NAME@(const @TIN@ *restrict scores, const int64_t *restrict labels, const uint8_t *mask, int64_t n_img,
          int64_t c, int64_t np, int64_t p0, int64_t p1, int64_t ignore, int64_t nb, const double *edges,
          double first_edge_d, int probs, int classwise, double *out, int64_t *flags) {
    const int logits = !probs;
    @T@ *restrict e = (@T@ *)malloc(sizeof(@T@) * (size_t)c * TP);
    if (!e) { flags[0] = -1; return; }
    double *per_image = out, *cw = out + n_img * 3 * nb, *totals = cw + 3 * c * nb, *sums = totals + c;
    const @T@ first_edge = (@T@)first_edge_d;
    @T@ top[TP], s[TP], sq[TP], ey[TP], dy[TP], rv[TP];
    @T@ arg[TP], yv[TP]; @TIN@ fin[TP];
    int64_t y[TP]; uint8_t valid[TP];
    for (int64_t n = 0; n < n_img; ++n) {
        const @TIN@ *xs = scores + n * c * np;
        double *pim = per_image + n * 3 * nb;
        for (int64_t j0 = p0; j0 < p1; j0 += TP) {
            const int64_t m = p1 - j0 < TP ? p1 - j0 : TP;
            for (int64_t j = 0; j < m; ++j) {
                int64_t lab = labels[n * np + j0 + j];
                int bad = lab != ignore && (lab < 0 || lab >= c);  /* counted under the mask too, as checks.py does */
                int v = !bad && lab != ignore && (!mask || mask[n * np + j0 + j]);
                flags[1] += bad;
                valid[j] = (uint8_t)v; y[j] = v ? lab : 0; yv[j] = v ? (@T@)lab : (@T@)-1;
            }
            for (int64_t j = 0; j < m; ++j) {
                @TIN@ u = xs[j0 + j]; @T@ v = (@T@)u; top[j] = v; arg[j] = 0; fin[j] = u - u;
            }
            for (int64_t k = 1; k < c; ++k) {
                const @TIN@ *restrict row = xs + k * np + j0;
                for (int64_t j = 0; j < m; ++j) {
                    @TIN@ u = row[j]; @T@ v = (@T@)u;
                    fin[j] += u - u;
                    int gt = v > top[j];
                    top[j] = gt ? v : top[j]; arg[j] = gt ? (@T@)k : arg[j];
                }
            }
            for (int64_t j = 0; j < m; ++j) { s[j] = 0; sq[j] = 0; ey[j] = 0; dy[j] = 0; }
            for (int64_t k = 0; k < c; ++k) {
                const @TIN@ *restrict row = xs + k * np + j0;
                @T@ *restrict ek = e + k * TP;
                const @T@ kk = (@T@)k;
                if (logits) {  /* two loops: a select between exp and the score stops the vectoriser */
                    for (int64_t j = 0; j < m; ++j) {
                        @T@ d = (@T@)row[j] - top[j], ex = @EXP@(d);
                        int is_y = yv[j] == kk;
                        ek[j] = ex; s[j] += ex; sq[j] += ex * ex;
                        ey[j] = is_y ? ex : ey[j]; dy[j] = is_y ? d : dy[j];
                    }
                } else {
                    for (int64_t j = 0; j < m; ++j) {
                        @T@ ex = (@T@)row[j];
                        ek[j] = ex; s[j] += ex; sq[j] += ex * ex;
                        ey[j] = yv[j] == kk ? ex : ey[j];
                    }
                }
            }
            for (int64_t j = 0; j < m; ++j) {
                if (fin[j] != 0) flags[0] += 1; /* NaN or infinity somewhere in this pixel */
                @T@ r = (@T@)1 / s[j];
                rv[j] = valid[j] ? (probs ? (@T@)1 : r) : (@T@)0;
                if (!valid[j]) continue;
                @T@ conf = probs ? top[j] : r, p_y = probs ? ey[j] : ey[j] * r;
                double logp = probs ? (double)@LOG@(p_y > @TINY@ ? p_y : @TINY@) : (double)(dy[j] - @LOG@(s[j]));
                @T@ brier = probs ? sq[j] - 2 * p_y + 1 : sq[j] * (r * r) - 2 * ey[j] * r + 1;
                int64_t b = @BIN@(conf, nb, edges);
                pim[b] += 1; pim[nb + b] += (double)conf; pim[2 * nb + b] += (arg[j] == (@T@)y[j]);
                sums[0] -= logp; sums[1] += (double)brier;
                if (classwise) cw[2 * c * nb + y[j] * nb + @BIN@(p_y, nb, edges)] += 1;
            }
            if (!classwise) continue;
            for (int64_t k = 0; k < c; ++k) {
                @T@ *restrict ek = e + k * TP;
                @T@ tot = 0; int64_t above = 0;
                #pragma omp simd reduction(+:tot, above)
                for (int64_t j = 0; j < m; ++j) {
                    @T@ p = ek[j] * rv[j];
                    ek[j] = p; tot += p; above += p >= first_edge;
                }
                totals[k] += (double)tot;
                if (!above) continue;
                double *cc = cw + k * nb, *cs = cw + c * nb + k * nb;
                for (int64_t j = 0; j < m; ++j) {
                    @T@ p = ek[j];
                    if (p >= first_edge) { int64_t b = @BIN@(p, nb, edges); cc[b] += 1; cs[b] += (double)p; }
                }
            }
        }
    }
    free(e);
}
"""

_INSTANCES = [  # NAME, TIN (scores), T (per-pixel terms), EXP, LOG, BIN, TINY (smallest normal T)
    ("sums_f32_f32", "float", "float", "exp_f", "logf", "bin_f", "1.17549435e-38f"),
    ("sums_f32_f64", "float", "double", "exp_d", "log", "bin_d", "2.2250738585072014e-308"),
    ("sums_f64_f32", "double", "float", "exp_f", "logf", "bin_f", "1.17549435e-38f"),
    ("sums_f64_f64", "double", "double", "exp_d", "log", "bin_d", "2.2250738585072014e-308"),
]


def _instantiate(values: tuple) -> str:
    out = _KERNEL
    for key, value in zip(("NAME", "TIN", "T", "EXP", "LOG", "BIN", "TINY"), values, strict=True):
        out = out.replace(f"@{key}@", value)
    return out


_SOURCE = _COMMON + "\n" + "\n".join(_instantiate(v) for v in _INSTANCES)

_state: dict = {"lib": None, "why": None, "tried": False, "pool": None, "pool_size": 0, "pid": None}
_lock = threading.Lock()


def _cpu_key() -> str:
    """What ``-march=native`` depends on: the CPU model and its feature flags (Linux), else the platform."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags"))][:2]
    except OSError:
        lines = []
    return platform.machine() + platform.processor() + "".join(lines)


def _compile() -> ctypes.CDLL:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise OSError("no C compiler (cc or gcc) on PATH")
    key = hashlib.sha256("|".join([_SOURCE, cc, *_FLAGS, _cpu_key()]).encode()).hexdigest()[:16]
    folder = cache_dir("native")
    lib = folder / f"calibration_sums_{key}.so"
    if not lib.exists():
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            c_file, so_file = os.path.join(tmp, "k.c"), os.path.join(tmp, "k.so")
            with open(c_file, "w") as f:
                f.write(_SOURCE)
            done = subprocess.run([cc, *_FLAGS, "-o", so_file, c_file, "-lm"], capture_output=True, text=True,
                                  timeout=120)
            if done.returncode != 0:
                raise OSError(f"{cc} failed: {done.stderr.strip()[:500]}")
            os.replace(so_file, lib)  # atomic: another process may be compiling the same file
    dll = ctypes.CDLL(str(lib))
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    for name, *_ in _INSTANCES:
        fn = getattr(dll, name)
        fn.restype = None
        fn.argtypes = [ptr, ptr, ptr, i64, i64, i64, i64, i64, i64, i64, ptr, ctypes.c_double, ctypes.c_int,
                       ctypes.c_int, ptr, ptr]
    return dll


def _library() -> ctypes.CDLL | None:
    with _lock:
        if not _state["tried"]:
            _state["tried"] = True
            if os.environ.get("SEGCAL_NATIVE", "1") == "0":
                _state["why"] = "switched off by SEGCAL_NATIVE=0"
            else:
                try:
                    lib = _compile()
                    _self_test(lib)
                    _state["lib"] = lib
                except (OSError, subprocess.SubprocessError) as err:
                    _state["why"] = str(err)
        return _state["lib"]


def _self_test(lib: ctypes.CDLL) -> None:
    """A small batch through every compiled variant against the fused PyTorch pass: a compiler or CPU on which the
    kernel goes wrong makes the backend unavailable (the meter then uses the fused pass) instead of wrong."""
    from segcal_lib.metrics_fused import calibration_sums as fused_sums

    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 7, (2, 300), generator=g)
    labels[:, :20] = 255
    edges = torch.arange(11, dtype=torch.float64) / 10
    for scores in (torch.randn(2, 7, 300, generator=g, dtype=torch.float64) * 4,):
        for inputs, x in (("logits", scores), ("probs", scores.softmax(1))):
            for x_in in (x, x.float()):
                for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 1e-3)):
                    ours = _sums(lib, x_in, labels, None, 255, inputs, dtype, edges, True)
                    valid = labels != 255
                    ref = fused_sums(x_in, labels.where(valid, 0), valid, inputs, dtype, edges, True)
                    counts_equal = torch.equal(ours[0][0], ref[0][0]) and torch.equal(ours[3][2], ref[3][2])
                    close = all(torch.allclose(a, b, rtol=tol, atol=tol) for a, b in zip(ours[:4], ref, strict=True))
                    if not (counts_equal and close and ours[4:] == (0, 0)):
                        raise OSError(f"the compiled kernel disagrees with the fused pass ({inputs}, {x_in.dtype} "
                                      f"scores, {dtype} terms): not used")


def available() -> bool:
    """Whether the native kernel could be built (or found in the cache) and loaded on this machine."""
    return _library() is not None


def native_status() -> str:
    """One line: the native backend is in use, or why not."""
    return "native kernel loaded" if available() else f"native kernel unavailable: {_state['why']}"


def _pool(n: int) -> ThreadPoolExecutor:
    """A pool of ``n`` threads, made anew after a fork (a forked child has none of its parent's threads)."""
    with _lock:
        if _state["pool_size"] != n or _state.get("pid") != os.getpid():
            if _state["pool"] is not None and _state.get("pid") == os.getpid():
                _state["pool"].shutdown(wait=False)
            _state["pool"] = ThreadPoolExecutor(n, thread_name_prefix="segcal-native")
            _state["pool_size"], _state["pid"] = n, os.getpid()
        return _state["pool"]


@torch.no_grad()
def calibration_sums(scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None, ignore_index: int,
                     inputs: str, dtype: torch.dtype, edges: torch.Tensor, classwise: bool):
    """The sums of :func:`segcal_lib.metrics_fused.calibration_sums`, from the raw labels, plus the input screen.

    Parameters
    ----------
    scores : (N, C, P) float tensor on the CPU, logits or probabilities (``inputs``); any float dtype and strides
        (float16 and bfloat16, or strided scores, are copied to float32 one block of pixels at a time).
    labels : (N, P) integer labels, ``ignore_index`` for pixels to leave out.
    mask : optional (N, P) bool, the pixels that count (with the labels that are not ``ignore_index``).
    dtype : torch.float32 (``fast``) or torch.float64 (``exact``), the dtype of the per-pixel terms.
    edges : (B+1,) float64 bin edges ``arange(B+1) / B``.
    classwise : also return the per-class bins.

    Returns
    -------
    per_image (3, N, B), nll, brier, classwise (3, C, B) or None, all float64 as in the fused backend; then
    ``n_nonfinite`` (pixels with a NaN or infinite score) and ``n_bad_labels`` (labels neither in [0, C) nor
    ``ignore_index`` at pixels the mask keeps; they are left out of the sums).
    """
    lib = _library()
    if lib is None:
        raise ValueError(f"backend='native' is not available here ({native_status()}); use backend='fused'")
    return _sums(lib, scores, labels, mask, ignore_index, inputs, dtype, edges, classwise)


def _sums(lib: ctypes.CDLL, scores, labels, mask, ignore_index, inputs, dtype, edges, classwise):
    n, c, p = scores.shape
    b = edges.numel() - 1
    labels = labels.to(torch.int64).contiguous()
    mask_u8 = None if mask is None else mask.to(torch.bool).contiguous().view(torch.uint8)
    edges = edges.to(torch.float64).contiguous()
    first_edge = edges[1].to(dtype)
    if first_edge.double() < edges[1]:  # the smallest dtype number at or above the first edge (as bin_index)
        first_edge = torch.nextafter(first_edge, torch.tensor(float("inf"), dtype=dtype))
    size = n * 3 * b + 3 * c * b + c + 2
    direct = scores.dtype in (torch.float32, torch.float64) and scores.is_contiguous()
    if direct:
        parts = _split(p, torch.get_num_threads(), n)
        blocks = [(scores, labels, mask_u8, lo, hi) for lo, hi in parts]
    else:  # copy blocks of pixels to float32: the copies stay small whatever the batch
        step = max(_TP, (2**22 // max(1, n * c)) // _TP * _TP)
        blocks = [(scores[:, :, s:s + step].to(torch.float32).contiguous(), labels[:, s:s + step].contiguous(),
                   None if mask_u8 is None else mask_u8[:, s:s + step].contiguous(), 0, min(step, p - s))
                  for s in range(0, p, step)]
    fn = getattr(lib, f"sums_{'f32' if blocks and blocks[0][0].dtype == torch.float32 else 'f64'}_"
                      f"{'f32' if dtype == torch.float32 else 'f64'}")

    def run(block):
        x, y, m, lo, hi = block
        out = torch.zeros(size, dtype=torch.float64)
        flags = torch.zeros(2, dtype=torch.int64)
        fn(x.data_ptr(), y.data_ptr(), None if m is None else m.data_ptr(), n, c, x.shape[2], lo, hi,
           ignore_index, b, edges.data_ptr(), float(first_edge), int(inputs == "probs"), int(classwise),
           out.data_ptr(), flags.data_ptr())
        return out, flags

    if len(blocks) > 1 and direct:
        results = list(_pool(len(blocks)).map(run, blocks))
    else:
        results = [run(blk) for blk in blocks]
    out = torch.stack([r[0] for r in results]).sum(0) if results else torch.zeros(size, dtype=torch.float64)
    flags = torch.stack([r[1] for r in results]) if results else torch.zeros(1, 2, dtype=torch.int64)
    if (flags < 0).any():
        raise MemoryError("the native calibration kernel could not allocate its tile buffer")
    flags = flags.sum(0)
    per_image = out[:n * 3 * b].view(n, 3, b).transpose(0, 1)
    nll, brier = out[-2], out[-1]
    cw = None
    if classwise:
        cw = out[n * 3 * b:n * 3 * b + 3 * c * b].view(3, c, b).clone()
        totals = out[n * 3 * b + 3 * c * b:-2]
        # Bin 0 of each class holds whatever its totals leave to the other bins.
        cw[0, :, 0] = per_image[0].sum() - cw[0, :, 1:].sum(1)
        cw[1, :, 0] = totals - cw[1, :, 1:].sum(1)
    return per_image, nll, brier, cw, int(flags[0]), int(flags[1])


def _split(p: int, threads: int, n: int) -> list[tuple[int, int]]:
    """Pixel ranges (multiples of the tile) for ``threads`` threads, one range when the batch is small."""
    k = max(1, min(threads, (n * p) // _MIN_PIXELS_PER_THREAD))
    step = -(-p // k // _TP) * _TP if k > 1 else p
    return [(s, min(s + step, p)) for s in range(0, p, max(1, step))] or [(0, 0)]
