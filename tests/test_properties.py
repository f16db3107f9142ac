"""Property-based tests (hypothesis): meters against a float64 brute force, the input checks, window tiling, and
cache corruption detection, on random shapes, dtypes, ignore patterns, extreme and saturated logits and empty images.

Each property runs a bounded number of examples (``max_examples``) so that the whole file stays within a few tens of
seconds on two CPU cores; the CI budget for it is two minutes.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_metrics import reference  # the float64 brute-force reference (NumPy, explicit bin loops)

from segcal_lib.checks import check_images, check_labels, check_logits_labels
from segcal_lib.fileio import CorruptCacheError, read_entry, write_entry
from segcal_lib.inference import predict_logits, window_starts
from segcal_lib.logit_store import LogitStore
from segcal_lib.metrics import CalibrationMeter, SegmentationMeter, calibration_metrics

torch.set_num_threads(1)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DTYPES = [torch.float16, torch.float32, torch.float64]
INT_DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64]


@st.composite
def batches(draw, min_size=0):
    """Random (scores, labels, mask, inputs): empty or tiny images, 2-5 classes, ignore patterns from none to all,
    logit scales from 0 (all classes tied) to saturating, in float16/32/64, logits or probabilities."""
    n, c = draw(st.integers(min_size, 3)), draw(st.integers(2, 5))
    h, w = draw(st.integers(min_size, 5)), draw(st.integers(min_size, 5))
    dtype = draw(st.sampled_from(DTYPES))
    scale = draw(st.sampled_from([0.0, 1.0, 8.0, 200.0, 3000.0]))
    p_ignore = draw(st.sampled_from([0.0, 0.3, 1.0]))
    inputs = draw(st.sampled_from(["logits", "probs"]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    logits = torch.randn(n, c, h, w, generator=g, dtype=torch.float64) * scale
    labels = torch.randint(0, c, (n, h, w), generator=g)
    labels[torch.rand(n, h, w, generator=g) < p_ignore] = 255
    mask = torch.rand(n, h, w, generator=g) < 0.7 if draw(st.booleans()) else None
    # Probabilities are formed in float64 then rounded: in float16 they may sum to 1 only within its tolerance.
    scores = (logits.softmax(1) if inputs == "probs" else logits).to(dtype)
    return scores, labels, mask, inputs


# ----------------------------------------------------------------------------------------------------------- meters
@FAST
@given(batches(), st.sampled_from([1, 3, 10]))
def test_calibration_meter_matches_float64_brute_force(batch, n_bins):
    scores, labels, mask, inputs = batch
    res = CalibrationMeter(scores.shape[1], n_bins=n_bins, inputs=inputs).update(scores, labels, mask).compute()
    if not scores.numel() or res["n_pixels"] == 0:  # empty inputs: documented NaN everywhere, counts 0
        assert res["n_pixels"] == 0 and all(math.isnan(res[k]) for k in ("ece", "nll", "brier", "accuracy"))
        return
    ref = reference(scores, labels, n_bins, inputs=inputs, mask=mask)
    for key in ("ece", "mce", "image_ece", "image_ece_std", "classwise_ece", "nll", "brier", "accuracy",
                "confidence"):
        assert res[key] == pytest.approx(ref[key], abs=1e-9, rel=1e-9), key
    assert res["n_pixels"] == ref["n_pixels"] and res["n_images"] == ref["n_images"]


@FAST
@given(batches(), st.integers(1, 3))
def test_meters_stream_and_merge_like_one_pass(batch, parts):
    scores, labels, mask, inputs = batch
    c = scores.shape[1]
    whole = CalibrationMeter(c, inputs=inputs).update(scores, labels, mask).compute()
    merged, seg = CalibrationMeter(c, inputs=inputs), SegmentationMeter(c)
    for idx in torch.arange(scores.shape[0]).chunk(parts) or [torch.arange(0)]:
        m = None if mask is None else mask[idx]
        merged.merge(CalibrationMeter(c, inputs=inputs).update(scores[idx], labels[idx], m))
        seg.merge(SegmentationMeter(c).update(scores[idx], labels[idx], m))
    streamed = merged.compute()
    for key in ("ece", "image_ece", "nll", "brier", "classwise_ece"):
        assert streamed[key] == pytest.approx(whole[key], abs=1e-12, nan_ok=True), key
    # Confusion matrix by brute force: one pixel at a time.
    pred = scores.double().argmax(1)
    expected = np.zeros((c, c), np.int64)
    valid = (labels != 255) & (mask if mask is not None else True)
    for y, p in zip(labels[valid].tolist(), pred[valid].tolist(), strict=True):
        expected[y, p] += 1
    assert np.array_equal(seg.compute()["confusion"], expected)


# ----------------------------------------------------------------------------------------------------------- checks
@FAST
@given(st.sampled_from(INT_DTYPES + DTYPES + [torch.bool]), st.integers(2, 6),
       st.lists(st.integers(-3, 300), min_size=0, max_size=12))
def test_every_entry_point_accepts_exactly_the_valid_labels(dtype, c, values):
    labels = torch.tensor(values, dtype=torch.int64)
    valid_values = all(0 <= v < c or v == 255 for v in values)
    representable = torch.equal(labels.to(dtype).to(torch.int64), labels) if dtype != torch.bool else False
    labels = labels.to(dtype).reshape(1, 1, -1)
    ok = dtype in INT_DTYPES and valid_values and representable
    scores = torch.zeros(1, c, 1, len(values))
    entry_points = [
        lambda: check_labels(labels, c),
        lambda: check_logits_labels(scores, labels, c),
        lambda: CalibrationMeter(c).update(scores, labels),
        lambda: SegmentationMeter(c).update(scores, labels),
        lambda: calibration_metrics(scores, labels),
    ]
    for call in entry_points:
        if ok:
            call()
        else:
            with pytest.raises(ValueError, match="labels"):
                call()


@FAST
@given(st.integers(0, 3), st.integers(0, 4), st.sampled_from(DTYPES),
       st.sampled_from([None, math.nan, math.inf, -math.inf, -0.01, 1.01, 255.0]))
def test_image_check_rejects_exactly_the_bad_images(n, size, dtype, bad):
    images = torch.rand(n, 3, size, size).to(dtype)
    if bad is not None and images.numel():
        images.view(-1)[images.numel() // 2] = bad
    broken = bad is not None and images.numel() > 0
    if broken:
        with pytest.raises(ValueError, match="images"):
            check_images(images)
    else:
        check_images(images)


# ----------------------------------------------------------------------------------------------------------- windows
@FAST
@given(st.integers(1, 60), st.data())
def test_windows_cover_every_pixel(crop, data):
    length = data.draw(st.integers(crop, 200))
    stride = data.draw(st.integers(1, crop))
    starts = window_starts(length, crop, stride)
    assert starts[0] == 0 and starts[-1] == length - crop
    assert all(0 < b - a <= stride for a, b in zip(starts, starts[1:], strict=False))
    cover = np.zeros(length, int)
    for s in starts:
        cover[s:s + crop] += 1
    assert cover.min() >= 1


@SLOW
@given(st.integers(1, 12), st.integers(1, 12), st.integers(1, 8), st.integers(1, 8), st.data())
def test_sliding_window_of_a_pointwise_model_equals_the_whole_image(h, w, ch, cw, data):
    stride = (data.draw(st.integers(1, ch)), data.draw(st.integers(1, cw)))
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 4, 1)  # pointwise: a window sees exactly what the whole image does, pixel by pixel
    images = torch.rand(2, 3, h, w)
    whole = predict_logits(model, images)
    slide = predict_logits(model, images, mode="slide", crop_size=(ch, cw), stride=stride, pad_value=0.0)
    torch.testing.assert_close(slide, whole, rtol=1e-5, atol=1e-5)  # no gap (NaN) and no double counting


# ----------------------------------------------------------------------------------------------------------- caches
def _damage(path: Path, how: str, where: float, bit: int) -> None:
    data = bytearray(path.read_bytes())
    pos = min(int(where * len(data)), len(data) - 1)
    if how == "truncate":
        del data[pos:]
    elif how == "flip":
        data[pos] ^= 1 << bit
    else:  # append
        data += b"\0"
    path.write_bytes(bytes(data))


DAMAGE = [st.sampled_from(["truncate", "flip", "append"]), st.floats(0, 1), st.integers(0, 7)]


@FAST
@given(st.binary(min_size=1, max_size=3000), *DAMAGE)
def test_any_truncation_or_bit_flip_of_an_entry_is_detected(payload, how, where, bit):
    with tempfile.TemporaryDirectory() as tmp:
        data, meta = Path(tmp) / "data.bin", Path(tmp) / "meta.json"
        data.write_bytes(payload)
        write_entry(meta, [data], {"what": "test", "values": [1.5, 2], "name": "café"})
        assert read_entry(meta)["what"] == "test"
        target = data if where < 0.5 else meta
        _damage(target, how, where * 2 % 1, bit)
        with pytest.raises(CorruptCacheError) as info:
            read_entry(meta)
        assert info.value.path == target


@pytest.fixture(scope="module")
def store_bytes(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    g = torch.Generator().manual_seed(0)
    LogitStore.from_arrays(root / "s", torch.randn(3, 4, 6, 5, generator=g), torch.randint(0, 4, (3, 6, 5),
                                                                                           generator=g))
    return {p.name: p.read_bytes() for p in (root / "s").iterdir()}


@SLOW
@given(st.sampled_from(["logits.npy", "labels.npy", "meta.json"]), *DAMAGE)
def test_any_damage_to_a_logit_store_is_detected(store_bytes, name, how, where, bit):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "s"
        folder.mkdir()
        for file, blob in store_bytes.items():
            (folder / file).write_bytes(blob)
        assert len(LogitStore(folder)) == 3
        _damage(folder / name, how, where, bit)
        with pytest.raises(CorruptCacheError):
            LogitStore(folder)
