"""The SegFormer adapter on a SegFormer built from a small random configuration (no download): the library's model
interface (images in [0, 1], full-resolution logits), inference modes, stored logits, and the offline message."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

from segcal_lib.dump import dump_logits  # noqa: E402
from segcal_lib.inference import predict_logits  # noqa: E402
from segcal_lib.models.hub import (  # noqa: E402
    HUB_MODELS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    create_hub_model,
    list_hub_models,
    random_segformer,
)


@pytest.fixture(scope="module")
def model():
    return random_segformer(num_classes=5, seed=0)


def test_full_resolution_logits_of_normalised_images(model):
    x = torch.rand(2, 3, 37, 50)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        raw = model.net(pixel_values=(x - mean) / std).logits
        out = model(x)
    assert raw.shape[-2:] == (10, 13) and out.shape == (2, 5, 37, 50)  # SegFormer predicts at 1/4
    torch.testing.assert_close(out, F.interpolate(raw, size=(37, 50), mode="bilinear", align_corners=False))
    assert model.num_classes == 5 and model.class_names == tuple(f"class_{i}" for i in range(5))


def test_inference_modes_apply(model):
    x = torch.rand(1, 3, 40, 48)
    whole = predict_logits(model, x)
    one_window = predict_logits(model, x, mode="slide", crop_size=(40, 48))
    torch.testing.assert_close(one_window, whole)
    tta = predict_logits(model, x, mode="slide", crop_size=32, scales=(0.75, 1.0), flip=True)
    assert tta.shape == whole.shape and not torch.allclose(tta, whole)


def test_cache_key_names_the_configuration_and_seed(model):
    assert random_segformer(num_classes=5, seed=0).cache_key == model.cache_key
    assert random_segformer(num_classes=5, seed=1).cache_key != model.cache_key
    assert random_segformer(num_classes=6, seed=0).cache_key != model.cache_key


def test_logits_go_into_a_store(model, tmp_path):
    data = [(torch.rand(3, 32, 40), torch.randint(0, 5, (32, 40)), f"im{i}") for i in range(3)]
    store = dump_logits(model, data, tmp_path / "s", batch_size=2, progress=False)
    assert store.logits.shape == (3, 5, 32, 40) and store.names == ["im0", "im1", "im2"]


def test_registry_and_offline_message(monkeypatch, tmp_path):
    assert list_hub_models("*ade20k") == [f"segformer-b{i}-ade20k" for i in range(6)]
    assert HUB_MODELS["segformer-b5-ade20k"] == "nvidia/segformer-b5-finetuned-ade-640-640"
    with pytest.raises(ValueError, match="unknown hub model"):
        create_hub_model("segformer-b9-ade20k")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty cache: nothing to load offline
    with pytest.raises(OSError, match="hub. extra.*random_segformer"):
        create_hub_model("segformer-b0-ade20k", local_files_only=True)
