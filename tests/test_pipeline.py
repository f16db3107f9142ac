"""The chapters' wiring: data specs, train-or-load of the main model, and stored logits, on a tiny profile."""

import pytest
import torch

from segcal_lib import pipeline
from segcal_lib.config import get_profile


@pytest.fixture
def tiny(monkeypatch, tmp_path):
    monkeypatch.setenv("SEGCAL_CACHE", str(tmp_path / "cache"))
    return get_profile("fast", image_size=(32, 48), n_train=4, n_val=2, n_test=2, crop_size=32, train_iters=2,
                       batch_size=2, model="mobilenetv3_small_fpn")


def test_data_spec_follows_the_profile_and_loads():
    spec = pipeline.data_spec("synthetic", "test", "fast", shift="fog", severity=2)
    p = get_profile("fast")
    assert spec == {"name": "synthetic", "split": "test", "size": list(p.image_size), "n": p.n_test, "seed": 0,
                    "shift": "fog", "severity": 2}
    ds = pipeline.load_dataset(spec)
    assert len(ds) == p.n_test and ds[0].image.shape[1:] == p.image_size
    assert pipeline.data_spec("camvid", "val", "fast", domain="day")["domain"] == "day"
    camvid = pipeline.data_spec("camvid", "test", "fast", shift="blur", severity=3, domain="day")
    assert {k: camvid[k] for k in ("split", "shift", "severity", "domain")} == {
        "split": "test", "shift": "blur", "severity": 3, "domain": "day"}
    shifted, plain = pipeline.load_dataset(camvid), pipeline.load_dataset(pipeline.data_spec("camvid", "test", "fast",
                                                                                             domain="day"))
    assert len(shifted) == len(plain) and torch.equal(shifted[0].label, plain[0].label)
    assert shifted[0].name == plain[0].name + "+blur3"


@pytest.mark.parametrize(("args", "kw", "match"), [
    (("imagenet", "val"), {}, "name must be one of"),
    (("synthetic", "holdout"), {}, "split must be one of"),
    (("camvid", "test"), {"shift": "blur"}, "severity must be"),
    (("synthetic", "test"), {"shift": "snow", "severity": 2}, "shift must be one of"),
])
def test_data_spec_rejects_bad_requests(args, kw, match):
    with pytest.raises(ValueError, match=match):
        pipeline.data_spec(*args, "fast", **kw)


def test_model_is_trained_once_and_logits_are_stored_once(tiny, capsys):
    model, cfg = pipeline.get_model("synthetic", tiny, progress=False)
    assert "training" in capsys.readouterr().out
    again, cfg2 = pipeline.get_model("synthetic", tiny, progress=False)
    assert cfg2 == cfg and "loaded cached model" in capsys.readouterr().out
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    store = pipeline.get_logits(model, cfg, "test", tiny, progress=False)
    assert "computing logits" in capsys.readouterr().out
    logits, labels = store[0]
    assert logits.shape == (11, 32, 48) and labels.shape == (32, 48)
    pipeline.get_logits(again, cfg, "test", tiny, progress=False)
    assert "loaded cached logits" in capsys.readouterr().out
    shifted = pipeline.get_logits(model, cfg, "test", tiny, shift="dusk", severity=3, progress=False)
    assert torch.equal(shifted[0][1], labels) and not torch.equal(shifted[0][0], logits)  # same labels, other images
