"""The real-data path end to end on ../shared/data/camvid: reader -> model -> inference modes -> logit store -> meters.

Skipped when the folder is absent. A small random network stands in for a trained one: the point is that every
inference mode gives full-resolution logits that agree where they must, on real image sizes (360 x 480).
"""

import numpy as np
import pytest
import torch

from segcal_lib.data.datasets import CamVid, find_camvid
from segcal_lib.inference import predict_dataset, predict_logits
from segcal_lib.logit_store import LogitStore
from segcal_lib.metrics import CalibrationMeter, SegmentationMeter
from segcal_lib.models import create_model

ROOT = find_camvid()
pytestmark = [pytest.mark.camvid, pytest.mark.skipif(ROOT is None, reason="CamVid not found (set SEGCAL_CAMVID)")]


@pytest.fixture(scope="module")
def frames():
    ds = CamVid(ROOT, "test", domain="dusk", n=2)
    return torch.stack([s.image for s in ds]), torch.stack([s.label for s in ds])


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("mobilenetv3_small_fpn", num_classes=11).eval()


def test_slide_with_one_full_window_equals_whole(frames, model):
    images, _ = frames
    whole = predict_logits(model, images)
    slide = predict_logits(model, images, mode="slide", crop_size=images.shape[-2:], stride=images.shape[-2:])
    assert whole.shape == (2, 11, 360, 480)
    torch.testing.assert_close(slide, whole)


def test_overlapping_windows_and_multiscale_flip_give_full_resolution(frames, model):
    images, _ = frames
    slide = predict_logits(model, images, mode="slide", crop_size=256, stride=128)
    multi = predict_logits(model, images, scales=(0.5, 0.75), flip=True, average="probs")
    for out in (slide, multi):
        assert out.shape == (2, 11, 360, 480) and torch.isfinite(out).all()
    # log of a mean of probabilities: a valid log-distribution at every pixel
    torch.testing.assert_close(multi.exp().sum(1), torch.ones(2, 360, 480), atol=1e-4, rtol=0)


def test_store_round_trip_and_meters_on_camvid(frames, model, tmp_path):
    ds = CamVid(ROOT, "test", domain="dusk", n=2)
    store = LogitStore.write(tmp_path / "store", predict_dataset(model, ds, batch_size=2, progress=False), n=2,
                             class_names=ds.class_names, meta={"data": "camvid test dusk"})
    logits = predict_logits(model, frames[0])
    np.testing.assert_array_equal(store.logits[:], logits.half().numpy())
    np.testing.assert_array_equal(store.labels[:], frames[1].numpy().astype(np.uint8))
    meter, seg = CalibrationMeter(11), SegmentationMeter(11)
    for lg, lb in store.iter_batches(2):
        meter.update(lg, lb)
        seg.update(lg, lb)
    res = meter.compute()
    assert res["n_pixels"] == int((frames[1] != 255).sum()) and res["n_images"] == 2
    assert 0 <= res["ece"] <= 1 and 0 <= seg.compute()["pixel_accuracy"] <= 1
