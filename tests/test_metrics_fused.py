"""The native and fused passes against the plain PyTorch reference path and the float64 NumPy brute force of
test_metrics."""

import math
import multiprocessing
import shutil

import numpy as np
import pytest
import torch

import segcal_lib.metrics_fused as fused
import segcal_lib.metrics_native as native
from segcal_lib.metrics import CalibrationMeter, SegmentationMeter
from tests.test_metrics import random_batch, reference

KEYS = ("ece", "mce", "image_ece", "image_ece_std", "classwise_ece", "nll", "brier", "accuracy", "confidence")
TOL = {"exact": 1e-12, "fast": 1e-6}


# Every backend under test; "native" wherever it can be built (test_native_kernel_builds says where that must be).
BACKENDS = ("native", "fused", "reference") if native.available() else ("fused", "reference")


def run(scores, labels, mask=None, **kw):
    c = scores.shape[1]
    return {b: CalibrationMeter(c, backend=b, **kw).update(scores, labels, mask) for b in BACKENDS}


def assert_backends_agree(meters, tol):
    for name in BACKENDS[:-1]:
        assert_same_meters(meters[name], meters["reference"], tol)


def assert_same_meters(fused_meter, ref_meter, tol):
    """Every result within ``tol`` (relative beyond 1, where the order of a float64 sum shows); the integer states
    (counts, hits) equal, since both bin the same numbers."""
    a, b = fused_meter.compute(), ref_meter.compute()
    for key in KEYS:
        np.testing.assert_allclose(a[key], b[key], atol=tol * max(1.0, abs(b[key])), rtol=0, err_msg=key)
    np.testing.assert_allclose(a["image_eces"], b["image_eces"], atol=tol, rtol=0)
    np.testing.assert_allclose(a["classwise_ece_per_class"], b["classwise_ece_per_class"], atol=tol, rtol=0)
    if tol == TOL["exact"]:
        for name in ("bin_count", "bin_hits", "cw_count", "cw_hits"):
            torch.testing.assert_close(getattr(fused_meter, name), getattr(ref_meter, name), atol=0, rtol=0,
                                       msg=name)
        for name in ("bin_conf", "cw_conf"):
            torch.testing.assert_close(getattr(fused_meter, name), getattr(ref_meter, name), atol=1e-9, rtol=1e-12)


def assert_matches_brute(res, ref, tol):
    for key in KEYS:
        assert res[key] == pytest.approx(ref[key], abs=tol, rel=0), key
    assert res["n_pixels"] == ref["n_pixels"] and res["n_images"] == ref["n_images"]


# ----------------------------------------------------------------------------------------------- random inputs
@pytest.mark.parametrize("precision", ["exact", "fast"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize(("n", "c", "n_bins"), [(3, 5, 10), (1, 2, 15), (2, 19, 10), (1, 150, 7)])
def test_fused_matches_reference_and_brute_force(precision, dtype, n, c, n_bins):
    scores, labels = random_batch(n=n, c=c, h=9, w=11, seed=c + n_bins, dtype=dtype)
    meters = run(scores, labels, n_bins=n_bins, precision=precision)
    assert_backends_agree(meters, TOL[precision])
    for name in BACKENDS[:-1]:
        assert_matches_brute(meters[name].compute(), reference(scores, labels, n_bins), TOL[precision])


@pytest.mark.parametrize("precision", ["exact", "fast"])
def test_probabilities_fused_matches_reference(precision):
    scores, labels = random_batch(n=2, c=6, seed=31)
    probs = scores.double().softmax(1)
    meters = run(probs, labels, inputs="probs", precision=precision)
    assert_backends_agree(meters, TOL[precision])
    assert_matches_brute(meters[BACKENDS[0]].compute(), reference(probs, labels, inputs="probs"), TOL[precision])
    assert torch.equal(probs, scores.double().softmax(1))  # the caller's probabilities are not written to


def test_many_tiles_equal_one(monkeypatch):
    scores, labels = random_batch(n=3, c=7, h=20, w=30, seed=4)
    mask = torch.rand(labels.shape, generator=torch.Generator().manual_seed(3)) > 0.3
    whole = CalibrationMeter(7).update(scores, labels, mask)
    monkeypatch.setitem(fused._TILE_ELEMENTS, "cpu", 1)  # the 256-pixel floor: several tiles per image
    monkeypatch.setattr(fused, "_BLOCK_PIXELS", 900)  # and several blocks of per-pixel terms
    tiled = CalibrationMeter(7).update(scores, labels, mask)
    assert_same_meters(tiled, whole, TOL["exact"])
    assert_matches_brute(tiled.compute(), reference(scores, labels, mask=mask), TOL["exact"])


# ------------------------------------------------------------------------------------------------- edge cases
@pytest.mark.parametrize("precision", ["exact", "fast"])
def test_ties_go_to_the_first_class(precision):
    g = torch.Generator().manual_seed(5)
    scores = torch.randint(0, 3, (2, 6, 10, 10), generator=g).float()  # most pixels have tied maxima
    labels = torch.randint(0, 6, (2, 10, 10), generator=g)
    meters = run(scores, labels, precision=precision)
    assert_backends_agree(meters, TOL[precision])
    res = meters[BACKENDS[0]].compute()
    assert_matches_brute(res, reference(scores, labels), TOL[precision])
    hits = (scores.argmax(1) == labels).double().mean().item()  # torch.argmax takes the first of tied classes
    assert res["accuracy"] == pytest.approx(hits, abs=1e-15)


@pytest.mark.parametrize("precision", ["exact", "fast"])
def test_saturated_logits(precision):
    scores, labels = random_batch(n=3, c=4, seed=6)
    scores[0] = scores[0].sign() * 1e4  # confidence exactly 1: the closed last bin; log-probabilities of -2e4
    scores[1, :, :4] = torch.tensor([3e4, -3e4, 3e4, 0.0])[:, None, None]  # saturated and tied
    meters = run(scores, labels, precision=precision)
    assert_backends_agree(meters, TOL[precision])
    res = meters[BACKENDS[0]].compute()
    assert_matches_brute(res, reference(scores, labels), TOL[precision] * max(1.0, res["nll"]))
    assert np.isfinite(res["nll"]) and res["nll"] > 100


@pytest.mark.parametrize("precision", ["exact", "fast"])
def test_ignore_only_images_and_all_ignored(precision):
    scores, labels = random_batch(n=4, c=5, seed=7)
    labels[0] = 255
    labels[2] = 255
    meters = run(scores, labels, precision=precision)
    assert_backends_agree(meters, TOL[precision])
    assert meters[BACKENDS[0]].compute()["n_images"] == 2
    empty = CalibrationMeter(5, precision=precision).update(scores, torch.full_like(labels, 255)).compute()
    assert empty["n_pixels"] == 0 and np.isnan(empty["ece"]) and np.isnan(empty["classwise_ece"])


@pytest.mark.parametrize("precision", ["exact", "fast"])
@pytest.mark.parametrize("n_bins", [10, 4, 7])
def test_confidences_on_bin_edges(precision, n_bins):
    # probabilities [c, 1 - c] with c on the float64 edges k/B, one float64 ulp either side, and float32 roundings
    edges = torch.arange(n_bins + 1, dtype=torch.float64) / n_bins
    near = torch.cat([edges, torch.nextafter(edges, edges + 1), torch.nextafter(edges, edges - 1),
                      edges.float().double()]).clamp(0, 1)
    c = near[near >= 0.5]
    probs = torch.stack([c, 1 - c])[None, :, :, None].expand(1, 2, -1, 3).contiguous()
    labels = torch.randint(0, 2, (1, probs.shape[2], 3), generator=torch.Generator().manual_seed(n_bins))
    labels[:, c == 1] = 0  # a label of probability 0 has a log clamped at the dtype's tiny: not what is tested here
    for scores in (probs, probs.float()):
        meters = run(scores, labels, inputs="probs", n_bins=n_bins, precision=precision)
        assert_backends_agree(meters, TOL[precision])
        # "fast" bins the float32 rounding of the scores, exactly by the float64 rule
        seen = scores if precision == "exact" else scores.float()
        assert_matches_brute(meters[BACKENDS[0]].compute(), reference(seen, labels, n_bins, inputs="probs"),
                             TOL[precision])


def test_logits_whose_confidence_is_an_edge():
    # equal logits over C classes give confidence 1/C; C = 2, 4, 5 hit the edges 1/2, 1/4, 1/5 of 10 and 4 bins
    for c in (2, 4, 5):
        scores = torch.zeros(1, c, 3, 3)
        labels = torch.arange(9).view(1, 3, 3) % c
        for n_bins in (4, 10):
            for precision in ("exact", "fast"):
                meters = run(scores, labels, n_bins=n_bins, precision=precision)
                assert_backends_agree(meters, TOL[precision])
                assert_matches_brute(meters[BACKENDS[0]].compute(), reference(scores, labels, n_bins), TOL[precision])


def test_float32_bin_index_is_the_float64_rule():
    # every float32 number within a few ulps of each edge, for several bin counts
    for n_bins in (3, 7, 10, 15, 1000):
        edges = torch.arange(n_bins + 1, dtype=torch.float64) / n_bins
        v = edges.float()
        around = [v]
        for _ in range(3):
            around += [torch.nextafter(around[-2 if len(around) > 1 else -1], torch.tensor(2.0)),
                       torch.nextafter(around[-1], torch.tensor(-1.0))]
        conf = torch.cat(around).clamp(0, 1).unique()
        want = ((conf.double()[:, None] >= edges[None, 1:-1]).sum(1))  # number of interior edges at or below
        torch.testing.assert_close(fused.bin_index(conf, edges), want, atol=0, rtol=0)
        torch.testing.assert_close(fused.bin_index(conf.double(), edges), want, atol=0, rtol=0)


# ----------------------------------------------------------------------------------------------- arg-max, settings
@pytest.mark.parametrize("c", [2, 19, 300])
def test_first_argmax_matches_torch_with_ties(c):
    g = torch.Generator().manual_seed(c)
    scores = torch.randint(0, 4, (2, c, 7, 5), generator=g).to(torch.bfloat16)
    torch.testing.assert_close(fused.first_argmax(scores), scores.argmax(1), atol=0, rtol=0)
    if c > 255:  # first_argmax itself takes any C (its rank column widens); the meters stop at 255 classes
        return
    labels = torch.randint(0, c, (2, 7, 5), generator=g)
    cm = SegmentationMeter(c).update(scores, labels).compute()["confusion"]
    np.testing.assert_array_equal(cm, SegmentationMeter(c).update(scores.argmax(1), labels).compute()["confusion"])


def test_precision_and_compute_dtype_settings():
    assert CalibrationMeter(3).precision == "exact" and CalibrationMeter(3).compute_dtype == torch.float64
    assert CalibrationMeter(3, compute_dtype=torch.float32).precision == "fast"
    assert CalibrationMeter(3, precision="fast", compute_dtype=torch.float32).compute_dtype == torch.float32
    assert CalibrationMeter(3).backend == "auto"
    for kw, match in [(dict(precision="half"), "precision"), (dict(compute_dtype=torch.float16), "compute_dtype"),
                      (dict(precision="exact", compute_dtype=torch.float32), "contradicts"),
                      (dict(backend="triton"), "backend")]:
        with pytest.raises(ValueError, match=match):
            CalibrationMeter(3, **kw)


def test_fast_precision_has_no_drift_over_many_batches():
    # the same batch 64 times: every per-bin sum is 64x the one-batch sum, so the ECE must not move
    scores, labels = random_batch(n=2, c=19, h=32, w=32, seed=8)
    one = CalibrationMeter(19, precision="fast").update(scores, labels).compute()
    many = CalibrationMeter(19, precision="fast")
    for _ in range(64):
        many.update(scores, labels)
    res = many.compute()
    for key in ("ece", "classwise_ece", "nll", "brier", "accuracy"):
        assert res[key] == pytest.approx(one[key], abs=1e-12, rel=1e-12), key


# ------------------------------------------------------------------------------------------------- native backend
needs_native = pytest.mark.skipif(not native.available(), reason=native.native_status())


def test_native_kernel_builds_where_a_compiler_exists():
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler: the meters fall back to the fused backend")
    assert native.available(), native.native_status()


@needs_native
@pytest.mark.parametrize("precision", ["exact", "fast"])
def test_native_threads_and_strided_inputs_change_nothing(monkeypatch, precision):
    scores, labels = random_batch(n=2, c=19, h=21, w=37, seed=9)  # 777 pixels: several tiles of 128, a ragged end
    mask = torch.rand(labels.shape, generator=torch.Generator().manual_seed(9)) > 0.2
    one = CalibrationMeter(19, backend="native", precision=precision).update(scores, labels, mask)
    monkeypatch.setattr(native, "_MIN_PIXELS_PER_THREAD", 1)  # every thread gets a slice, even of a small batch
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    split = CalibrationMeter(19, backend="native", precision=precision).update(scores, labels, mask)
    assert_same_meters(split, one, TOL["exact"])
    strided = scores.to(memory_format=torch.channels_last)  # not contiguous as (N, C, P): copied block by block
    assert not strided.flatten(2).is_contiguous()
    other = CalibrationMeter(19, backend="native", precision=precision).update(strided, labels, mask)
    assert_same_meters(other, one, TOL["exact"])


@needs_native
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_native_screen_rejects_non_finite_scores_like_the_checks(bad):
    scores, labels = random_batch(n=2, c=5, seed=10)
    labels[1, 0, 0] = 255
    scores[1, 3, 0, 0] = bad  # at an ignored pixel: the check covers every score, as checks.check_scores does
    meter = CalibrationMeter(5, backend="native").update(*random_batch(n=1, c=5, seed=11))
    before = meter.compute()
    with pytest.raises(ValueError, match="NaN or infinite"):
        meter.update(scores, labels)
    after = meter.compute()  # a rejected batch leaves the meter as it was
    assert after["n_pixels"] == before["n_pixels"] and after["ece"] == before["ece"]
    assert CalibrationMeter(5, backend="native", validate=False).update(scores, labels).compute()["n_pixels"] > 0


@needs_native
def test_native_screen_rejects_bad_labels_even_where_masked():
    scores, labels = random_batch(n=2, c=5, seed=12)
    labels[0, 1, 2] = 7
    mask = torch.ones_like(labels, dtype=torch.bool)
    mask[0, 1, 2] = False
    meter = CalibrationMeter(5, backend="native")
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\)"):
        meter.update(scores, labels, mask)
    assert meter.compute()["n_pixels"] == 0


def test_native_backend_is_refused_where_it_cannot_run(monkeypatch):
    monkeypatch.setattr(native, "available", lambda: False)
    scores, labels = random_batch(n=1, c=3, seed=13)
    with pytest.raises(ValueError, match="backend='native'"):
        CalibrationMeter(3, backend="native").update(scores, labels)
    auto = CalibrationMeter(3).update(scores, labels).compute()  # "auto" falls back to the fused pass
    assert_matches_brute(auto, reference(scores, labels), TOL["exact"])


def _native_ece(scores, labels):
    return CalibrationMeter(scores.shape[1], backend="native").update(scores, labels).compute()["ece"]


def _pool_id():
    return id(native._pool(2))


@needs_native
def test_native_threads_work_in_a_forked_child(monkeypatch):
    # A forked child inherits the parent's thread-pool object but none of its threads: work sent to it could wait
    # forever (whether it does depends on timing), so the child must make a pool of its own.
    monkeypatch.setattr(native, "_MIN_PIXELS_PER_THREAD", 1)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    scores, labels = random_batch(n=2, c=5, h=16, w=16, seed=14)
    want = _native_ece(scores, labels)  # the parent's pool now exists
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply_async(_pool_id).get(timeout=60) != _pool_id()
        assert pool.apply_async(_native_ece, (scores, labels)).get(timeout=60) == want


def test_native_self_test_rejects_a_kernel_that_is_wrong_here():
    class Broken:  # a "library" whose every function returns without writing: all sums stay 0
        def __getattr__(self, name):
            return lambda *args: None

    with pytest.raises(OSError, match="disagrees with the fused pass"):
        native._self_test(Broken())


def test_fused_tile_loop_runs_on_one_thread_and_restores_the_count(monkeypatch):
    scores, labels = random_batch(n=2, c=7, h=20, w=30, seed=15)
    seen = []
    tiles = fused._reduce_tiles

    def spy(*args, **kw):
        seen.append(torch.get_num_threads())
        return tiles(*args, **kw)

    monkeypatch.setattr(fused, "_reduce_tiles", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        two = CalibrationMeter(7, backend="fused").update(scores, labels)
        assert torch.get_num_threads() == 2 and seen and set(seen) == {1}
    finally:
        torch.set_num_threads(before)
    one = CalibrationMeter(7, backend="fused").update(scores, labels)
    assert_same_meters(two, one, TOL["exact"])
