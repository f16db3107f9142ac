"""The meters against a float64 brute-force reference written another way (NumPy, explicit bin loops)."""

import numpy as np
import pytest
import torch

from segcal_lib.metrics import (
    CalibrationMeter,
    SegmentationMeter,
    boundary_mask,
    calibration_metrics,
    correctness_masks,
    expected_calibration_error,
    segmentation_metrics,
)

TOL = 1e-9


# ------------------------------------------------------------------------------------------------ brute-force reference
def _softmax64(scores, inputs):
    s = scores.double().numpy()
    if inputs == "probs":
        return s, np.log(np.maximum(s, np.finfo(np.float64).tiny))
    # p = e / sum(e) with e = exp(z - max): equal logits give exactly 1/C, as a confidence on a bin edge should.
    z = s - s.max(1, keepdims=True)
    e = np.exp(z)
    total = e.sum(1, keepdims=True)
    return e / total, z - np.log(total)


def _ece_loop(conf, hit, n_bins):
    """Equal-width ECE by an explicit loop over bins [k/B, (k+1)/B), the last one closed; plus MCE."""
    ece, mce, n = 0.0, 0.0, len(conf)
    for k in range(n_bins):
        lo, hi = k / n_bins, (k + 1) / n_bins
        inside = (conf >= lo) & ((conf < hi) | (k == n_bins - 1))
        if inside.sum() == 0:
            continue
        gap = abs(hit[inside].mean() - conf[inside].mean())
        ece += inside.sum() / n * gap
        mce = max(mce, gap)
    return ece, mce


def reference(scores, labels, n_bins=10, ignore=255, inputs="logits", mask=None):
    p, logp = _softmax64(scores, inputs)
    lab = labels.numpy().astype(np.int64)
    valid = lab != ignore
    if mask is not None:
        valid &= mask.numpy()
    n_img, c = p.shape[0], p.shape[1]
    pix_p = np.moveaxis(p, 1, -1)[valid]  # (n, C)
    pix_logp = np.moveaxis(logp, 1, -1)[valid]
    y = lab[valid]
    conf, pred = pix_p.max(1), pix_p.argmax(1)
    hit = (pred == y).astype(np.float64)
    ece, mce = _ece_loop(conf, hit, n_bins)
    onehot = np.eye(c)[y]
    image_eces = []
    for i in range(n_img):
        v = valid[i]
        if v.any():
            pi = np.moveaxis(p[i], 0, -1)[v]
            image_eces.append(_ece_loop(pi.max(1), (pi.argmax(1) == lab[i][v]).astype(float), n_bins)[0])
    classwise = [_ece_loop(pix_p[:, k], onehot[:, k], n_bins)[0] for k in range(c)]
    return {
        "ece": ece, "mce": mce, "image_ece": np.mean(image_eces), "image_ece_std": np.std(image_eces),
        "classwise_ece": np.mean(classwise), "nll": -pix_logp[np.arange(len(y)), y].mean(),
        "brier": ((pix_p - onehot) ** 2).sum(1).mean(), "accuracy": hit.mean(), "confidence": conf.mean(),
        "n_pixels": len(y),
        "n_images": len(image_eces), "image_eces": np.array(image_eces),
    }


def assert_matches(res, ref, tol=TOL):
    for key in ("ece", "mce", "image_ece", "image_ece_std", "classwise_ece", "nll", "brier", "accuracy",
                "confidence"):
        assert res[key] == pytest.approx(ref[key], abs=tol, rel=0), key
    assert res["n_pixels"] == ref["n_pixels"] and res["n_images"] == ref["n_images"]
    np.testing.assert_allclose(res["image_eces"], ref["image_eces"], atol=tol, rtol=0)


def random_batch(n=3, c=5, h=12, w=10, scale=3.0, seed=0, dtype=torch.float32, ignore_rows=2):
    g = torch.Generator().manual_seed(seed)
    scores = (torch.randn(n, c, h, w, generator=g, dtype=torch.float64) * scale).to(dtype)
    labels = torch.randint(0, c, (n, h, w), generator=g)
    labels[:, :ignore_rows] = 255
    return scores, labels


# ----------------------------------------------------------------------------------------------- agreement with brute
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("n_bins", [1, 10, 15])
def test_logits_match_brute_force(dtype, n_bins):
    scores, labels = random_batch(dtype=dtype, seed=n_bins)
    res = CalibrationMeter(5, n_bins).update(scores, labels).compute()
    assert_matches(res, reference(scores, labels, n_bins))


def test_two_classes_and_extreme_logits():
    scores, labels = random_batch(n=4, c=2, seed=3)
    scores[0] = scores[0].sign() * 1e4  # saturates: confidence exactly 1.0, lands in the closed last bin
    scores[1, :, :3] = torch.tensor([1e4, -1e4])[:, None, None]
    res = CalibrationMeter(2).update(scores, labels).compute()
    ref = reference(scores, labels)
    assert_matches(res, ref)
    assert np.isfinite(res["nll"]) and res["nll"] > 100  # confidently wrong pixels cost ~2e4 nats each


def test_confidences_exactly_on_bin_edges():
    # probabilities [c, 1 - c] with c on the edges k/10 (as float64 numbers) and at 1.0
    edges = torch.tensor([0.6, 0.7, 0.8, 0.9, 1.0, 0.6999999999999999, 0.30000000000000004 + 0.5], dtype=torch.float64)
    c = edges.repeat(6)[None, None, :, None].expand(1, 1, -1, 4)
    probs = torch.cat([c, 1 - c], 1).contiguous()
    labels = torch.randint(0, 2, (1, probs.shape[2], 4), generator=torch.Generator().manual_seed(1))
    meter = CalibrationMeter(2, inputs="probs").update(probs, labels)
    assert_matches(meter.compute(), reference(probs, labels, inputs="probs"))
    counts = meter.compute()["reliability"]["count"]
    assert counts[9] == 4 * 6 * 2  # 0.9 and 1.0 both in the last bin [0.9, 1.0]
    assert counts[6] == 4 * 6 * 2  # 0.6 and 0.6999999999999999 < 0.7 both in [0.6, 0.7)


def test_all_ignored_images_contribute_nothing():
    scores, labels = random_batch(n=4)
    labels[1] = 255
    labels[3] = 255
    res = CalibrationMeter(5).update(scores, labels).compute()
    assert res["n_images"] == 2
    assert_matches(res, reference(scores, labels))
    empty = CalibrationMeter(5).update(scores, torch.full_like(labels, 255)).compute()
    assert empty["n_pixels"] == 0 and empty["n_images"] == 0 and np.isnan(empty["ece"]) and np.isnan(empty["image_ece"])


def test_streaming_and_merge_equal_one_shot():
    scores, labels = random_batch(n=6, seed=7)
    one = CalibrationMeter(5).update(scores, labels).compute()
    streamed = CalibrationMeter(5)
    for i in range(0, 6, 2):
        streamed.update(scores[i:i + 2], labels[i:i + 2])
    a, b = CalibrationMeter(5).update(scores[:1], labels[:1]), CalibrationMeter(5).update(scores[1:], labels[1:])
    for res in (streamed.compute(), a.merge(b).compute()):
        for key in ("ece", "mce", "image_ece", "classwise_ece", "nll", "brier", "accuracy"):
            assert res[key] == pytest.approx(one[key], abs=1e-12)


def test_chunking_inside_update_is_invisible(monkeypatch):
    import segcal_lib.metrics as metrics

    scores, labels = random_batch(n=5, seed=9)
    whole = CalibrationMeter(5).update(scores, labels).compute()
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 1)  # one image per chunk
    chunked = CalibrationMeter(5).update(scores, labels).compute()
    assert chunked["ece"] == pytest.approx(whole["ece"], abs=1e-12)
    np.testing.assert_allclose(chunked["image_eces"], whole["image_eces"], atol=1e-12)


def test_mask_equals_relabelling_as_ignore():
    scores, labels = random_batch(seed=11)
    mask = torch.rand(labels.shape, generator=torch.Generator().manual_seed(2)) > 0.4
    res = CalibrationMeter(5).update(scores, labels, mask).compute()
    assert_matches(res, reference(scores, labels.where(mask, 255)))


def test_perfectly_calibrated_sample_has_zero_ece():
    # every pixel has confidence 0.75 for class 0 and exactly 75% of them are class 0
    probs = torch.tensor([0.75, 0.25], dtype=torch.float64)[None, :, None, None].expand(2, 2, 8, 8).contiguous()
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[:, :2] = 1  # a quarter of each image is class 1
    res = calibration_metrics(probs, labels, inputs="probs")
    assert res["ece"] == pytest.approx(0, abs=1e-15) and res["image_ece"] == pytest.approx(0, abs=1e-15)
    assert res["mce"] == pytest.approx(0, abs=1e-15)


def test_float32_compute_is_close_but_not_exact():
    scores, labels = random_batch(seed=5)
    res = CalibrationMeter(5, compute_dtype=torch.float32).update(scores, labels).compute()
    ref = reference(scores, labels)
    assert res["ece"] == pytest.approx(ref["ece"], abs=1e-5)


def test_agrees_with_torchmetrics_on_small_inputs():
    tm = pytest.importorskip("torchmetrics.classification")
    scores, labels = random_batch(n=4, c=6, h=16, w=16, seed=4)
    probs = scores.float().softmax(1)
    for n_bins in (10, 15):
        ours = expected_calibration_error(scores, labels, n_bins=n_bins)
        metric = tm.MulticlassCalibrationError(num_classes=6, n_bins=n_bins, norm="l1", ignore_index=255)
        theirs = metric(probs.permute(0, 2, 3, 1).reshape(-1, 6), labels.reshape(-1)).item()
        assert ours == pytest.approx(theirs, abs=1e-5)


def test_functional_image_reduction():
    scores, labels = random_batch(seed=8)
    ref = reference(scores, labels)
    assert expected_calibration_error(scores, labels, reduction="image") == pytest.approx(ref["image_ece"], abs=TOL)
    with pytest.raises(ValueError, match="reduction"):
        expected_calibration_error(scores, labels, reduction="mean")


def test_reliability_data_is_consistent():
    scores, labels = random_batch(n=4, seed=12)
    res = CalibrationMeter(5).update(scores, labels).compute()
    rel = res["reliability"]
    assert rel["count"].sum() == res["n_pixels"]
    np.testing.assert_allclose(rel["bin_edges"], np.linspace(0, 1, 11))
    filled = rel["count"] > 0
    ece = np.sum(rel["count"][filled] / res["n_pixels"] * np.abs(rel["accuracy"] - rel["confidence"])[filled])
    assert ece == pytest.approx(res["ece"], abs=1e-12)
    assert np.isnan(rel["confidence"][~filled]).all()


# ----------------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda s, y: (s[:, :4], y), "num_classes=5"),
        (lambda s, y: (s, y[:, :-1]), "labels must have shape"),
        (lambda s, y: (s[0], y[0]), r"\(N, C, H, W\)"),
        (lambda s, y: (s, y.float()), "integer"),
        (lambda s, y: (s.long(), y), "floating"),
        (lambda s, y: (s, y.where(y != 3, 7)), r"\[0, 5\)"),
        (lambda s, y: (s, y.where(y != 3, -1)), r"\[0, 5\)"),
        (lambda s, y: (s.index_fill(2, torch.tensor([4]), float("nan")), y), "NaN or infinite"),
        (lambda s, y: (s.index_fill(2, torch.tensor([4]), float("inf")), y), "NaN or infinite"),
    ],
)
def test_bad_input_raises(make, match):
    scores, labels = make(*random_batch())
    with pytest.raises(ValueError, match=match):
        CalibrationMeter(5).update(scores, labels)


def test_bad_probabilities_and_settings_raise():
    scores, labels = random_batch()
    with pytest.raises(ValueError, match="sum over dim 1"):
        CalibrationMeter(5, inputs="probs").update(scores.softmax(1) * 0.9, labels)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        CalibrationMeter(5, inputs="probs").update(scores, labels)
    with pytest.raises(ValueError, match="mask"):
        CalibrationMeter(5).update(scores, labels, mask=torch.ones(3, 12, 10))
    with pytest.raises(ValueError, match="inputs"):
        CalibrationMeter(5, inputs="auto")
    with pytest.raises(ValueError, match="num_classes"):
        CalibrationMeter(1)
    with pytest.raises(ValueError, match="merge"):
        CalibrationMeter(5).merge(CalibrationMeter(5, n_bins=15))


def test_probabilities_from_fp16_softmax_are_accepted():
    scores, labels = random_batch()
    probs = scores.half().softmax(1)
    res = CalibrationMeter(5, inputs="probs").update(probs, labels).compute()
    assert_matches(res, reference(probs, labels, inputs="probs"))


# -------------------------------------------------------------------------------------------------- segmentation
def test_segmentation_meter_against_loops():
    scores, labels = random_batch(n=4, c=4, seed=13)
    labels[0, 5:, :] = 0  # make class 0 frequent, so the classes differ in IoU
    res = SegmentationMeter(4).update(scores, labels).compute()
    pred, lab = scores.argmax(1).numpy().ravel(), labels.numpy().ravel()
    keep = lab != 255
    pred, lab = pred[keep], lab[keep]
    ious = [((pred == k) & (lab == k)).sum() / ((pred == k) | (lab == k)).sum() for k in range(4)]
    np.testing.assert_allclose(res["iou"], ious, atol=1e-12)
    assert res["miou"] == pytest.approx(np.mean(ious), abs=1e-12)
    assert res["pixel_accuracy"] == pytest.approx((pred == lab).mean(), abs=1e-12)
    same = segmentation_metrics(scores.argmax(1), labels, num_classes=4)
    np.testing.assert_array_equal(same["confusion"], res["confusion"])


def test_segmentation_absent_class_is_nan_and_excluded():
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[0, :2] = 1
    preds = labels.clone()
    res = SegmentationMeter(3).update(preds, labels).compute()
    assert np.isnan(res["iou"][2]) and res["miou"] == 1.0
    with pytest.raises(ValueError, match="class ids"):
        SegmentationMeter(3).update(preds + 5, labels)
    with pytest.raises(ValueError, match="num_classes is required"):
        segmentation_metrics(preds, labels)


# ---------------------------------------------------------------------------------------------------- pixel subsets
def test_correctness_masks_partition_valid_pixels():
    scores, labels = random_batch(seed=14)
    right, wrong = correctness_masks(scores, labels)
    assert not (right & wrong).any()
    assert ((right | wrong) == (labels != 255)).all()
    assert (scores.argmax(1)[right] == labels[right]).all()
    res_wrong = CalibrationMeter(5).update(scores, labels, wrong).compute()
    assert res_wrong["accuracy"] == 0


@pytest.mark.parametrize("radius", [1, 2])
def test_boundary_mask_against_loops(radius):
    g = torch.Generator().manual_seed(radius)
    labels = torch.randint(0, 3, (2, 9, 7), generator=g)
    labels[0, :3, :3] = 1
    labels[1, 4] = 255
    got = boundary_mask(labels, radius)
    lab = labels.numpy()
    want = np.zeros_like(lab, dtype=bool)
    for n, i, j in np.ndindex(*lab.shape):
        if lab[n, i, j] == 255:
            continue
        win = lab[n, max(0, i - radius):i + radius + 1, max(0, j - radius):j + radius + 1]
        want[n, i, j] = bool(((win != 255) & (win != lab[n, i, j])).any())
    np.testing.assert_array_equal(got.numpy(), want)
    with pytest.raises(ValueError, match="radius"):
        boundary_mask(labels, 0)


# ------------------------------------------------------------------------------------------------------ distributed
def _worker(rank, world, init_file, scores, labels, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    part = slice(rank * 2, rank * 2 + 2 + rank)  # ranks see 2 and 3 images: unequal lengths
    meter = CalibrationMeter(5).update(scores[part], labels[part]).sync()
    seg = SegmentationMeter(5).update(scores[part], labels[part]).sync()
    res = meter.compute()
    out[rank] = (res["ece"], res["image_ece"], res["classwise_ece"], res["n_images"], seg.compute()["miou"])
    dist.destroy_process_group()


def test_sync_over_two_gloo_processes(tmp_path):
    import torch.multiprocessing as mp

    scores, labels = random_batch(n=5, seed=21)
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), scores, labels, out), nprocs=2, join=True)
    one = CalibrationMeter(5).update(scores, labels).compute()
    miou = SegmentationMeter(5).update(scores, labels).compute()["miou"]
    for rank in range(2):
        ece, image_ece, cw, n_images, seg_miou = out[rank]
        assert ece == pytest.approx(one["ece"], abs=1e-12) and image_ece == pytest.approx(one["image_ece"], abs=1e-12)
        assert cw == pytest.approx(one["classwise_ece"], abs=1e-12) and n_images == 5
        assert seg_miou == pytest.approx(miou, abs=1e-12)
