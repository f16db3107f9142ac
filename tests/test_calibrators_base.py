"""The calibrator base, registry and pixel sampling, shown on temperature scaling."""

import numpy as np
import pytest
import torch

from segcal_lib.calibrators import NotFittedError, list_calibrators, make_calibrator
from segcal_lib.calibrators.sampling import sample_pixels
from segcal_lib.calibrators.temperature import fit_inverse_temperature
from segcal_lib.logit_store import LogitStore


def _data(t=2.0, n=4, c=5, hw=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, hw, hw, generator=g) * 4
    probs = (z / t).softmax(1).permute(0, 2, 3, 1).reshape(-1, c)
    y = torch.multinomial(probs, 1, generator=g).view(n, hw, hw)
    return z, y


def test_registry_lists_and_refuses_unknown_names():
    assert {"ts", "identity"} <= set(list_calibrators())
    assert list_calibrators("t*") == [n for n in list_calibrators() if n.startswith("t")]
    assert make_calibrator("temperature").registry_name == "ts"
    with pytest.raises(ValueError, match="unknown calibrator"):
        make_calibrator("nope")


def test_ts_recovers_a_known_temperature():
    z, y = _data(t=2.0, n=8, hw=64)
    cal = make_calibrator("ts", progress=False).fit(z, y)
    assert cal.temperature_ == pytest.approx(2.0, rel=0.02)


def test_inverse_temperature_is_the_nll_minimum_found_by_brute_force():
    z, y = _data(t=1.5, n=2, hw=16)
    x, yy = z.permute(0, 2, 3, 1).reshape(-1, 5).double(), y.reshape(-1)
    beta = fit_inverse_temperature(x, yy)
    grid = torch.linspace(beta * 0.9, beta * 1.1, 2001, dtype=torch.float64)
    nll = torch.stack([torch.nn.functional.cross_entropy(b * x, yy) for b in grid])
    assert float(grid[nll.argmin()]) == pytest.approx(beta, rel=2e-4)


def test_ts_never_raises_nll_on_its_own_calibration_split_and_keeps_argmax():
    z, y = _data(t=0.7)
    cal = make_calibrator("ts", progress=False).fit(z, y)
    ce = torch.nn.functional.cross_entropy
    assert ce(cal(z), y) <= ce(z, y) + 1e-9
    assert torch.equal(cal(z).argmax(1), z.argmax(1))


def test_unfitted_wrong_class_count_and_bad_input_errors():
    z, y = _data()
    cal = make_calibrator("ts", progress=False)
    with pytest.raises(NotFittedError, match="not fitted"):
        cal(z)
    cal.fit(z, y)
    with pytest.raises(ValueError, match="fitted on 5"):
        cal(torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match="labels must lie"):
        make_calibrator("ts", progress=False).fit(z, torch.full_like(y, 7))
    with pytest.raises(ValueError, match="labels must be given"):
        make_calibrator("ts").fit(z)
    with pytest.raises(ValueError, match="labels must be an integer"):
        make_calibrator("ts").fit(z, y.float())
    with pytest.raises(ValueError, match="no valid"):
        make_calibrator("ts", progress=False).fit(z, torch.full_like(y, 255))


def test_ignore_pixels_never_influence_the_fit():
    z, y = _data()
    y = y.clone()
    y[:, :8] = 255
    a = make_calibrator("ts", progress=False).fit(z, y).temperature_
    z2 = z.clone()
    z2[:, :, :8] = torch.randn_like(z2[:, :, :8]) * 50
    b = make_calibrator("ts", progress=False).fit(z2, y).temperature_
    assert a == b


def test_state_dict_round_trip_into_a_fresh_calibrator():
    z, y = _data()
    cal = make_calibrator("ts", progress=False).fit(z, y)
    fresh = make_calibrator("ts")
    fresh.load_state_dict(cal.state_dict())
    assert fresh.temperature_ == cal.temperature_ and fresh.num_classes_ == 5
    assert torch.equal(fresh(z), cal(z))


def test_fit_from_store_equals_fit_from_tensors(tmp_path):
    z, y = _data(n=5)
    z = z.half().float()  # the store keeps float16
    store = LogitStore.from_arrays(tmp_path / "s", z, y)
    a = make_calibrator("ts", progress=False, max_pixels=700).fit(store)
    b = make_calibrator("ts", progress=False, max_pixels=700).fit(z, y)
    c = make_calibrator("ts", progress=False, max_pixels=700).fit(list(store.iter_batches(8)))
    assert a.temperature_ == b.temperature_ == c.temperature_


def test_pixel_sample_is_uniform_without_replacement_and_seeded():
    n, hw = 3, 20
    z = torch.arange(n * hw * hw, dtype=torch.float32).view(n, 1, hw, hw).expand(n, 2, hw, hw).contiguous()
    y = torch.zeros(n, hw, hw, dtype=torch.long)
    y[0] = 255  # the first image is all ignore
    batches = [(z[i:i + 1], y[i:i + 1], None) for i in range(n)]
    x1, _ = sample_pixels(batches, 300, seed=1)
    x2, _ = sample_pixels(batches, 300, seed=1)
    ids = x1[:, 0].long().numpy()
    assert torch.equal(x1, x2) and len(np.unique(ids)) == 300
    assert ids.min() >= hw * hw  # nothing from the ignored image
    # Uniform: each of the two valid images contributes about half.
    share = (ids < 2 * hw * hw).mean()
    assert 0.4 < share < 0.6
    all_x, _ = sample_pixels(batches, 10**6)
    assert all_x.shape[0] == 2 * hw * hw
