"""Explorers, driven from code as a reader would drive them with the mouse."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from segcal_lib.logit_store import LogitStore  # noqa: E402
from segcal_lib.metrics import CalibrationMeter  # noqa: E402
from segcal_lib.widgets import TemperatureExplorer  # noqa: E402


def _data():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 4, 16, 16, generator=g) * 3
    p = (z / 2).softmax(1).permute(0, 2, 3, 1).reshape(-1, 4)
    return z, torch.multinomial(p, 1, generator=g).view(3, 16, 16)


def test_moving_the_slider_updates_the_numbers():
    z, y = _data()
    ex = TemperatureExplorer(z, y)
    assert ex.numbers["temperature"] == 1.0
    ex.slider.value = 2.0
    ref = CalibrationMeter(4).update(z / 2.0, y).compute()
    assert ex.numbers["temperature"] == pytest.approx(2.0)
    for key in ("ece", "image_ece", "nll"):
        assert ex.numbers[key] == pytest.approx(ref[key], abs=1e-12)
    assert "NLL" in ex._text.value and f"{ref['nll']:.4f}" in ex._text.value


def test_a_store_gives_the_same_numbers_and_the_static_figure_has_one_panel_per_t(tmp_path):
    z, y = _data()
    store = LogitStore.from_arrays(tmp_path / "s", z, y)
    ex = TemperatureExplorer(store, value=0.5)
    from_tensors = TemperatureExplorer(z.half().float(), y, value=0.5)  # the store keeps float16
    assert ex.numbers["nll"] == pytest.approx(from_tensors.numbers["nll"], abs=1e-12)
    fig = ex.show((0.5, 1.0, 2.0, 3.0))
    assert len(fig.axes) == 4 and fig.axes[1].get_title().startswith("T = 1")


def test_bad_arguments():
    z, y = _data()
    with pytest.raises(ValueError, match="t_range"):
        TemperatureExplorer(z, y, t_range=(2.0, 1.0))
    with pytest.raises(ValueError, match="labels must be given"):
        TemperatureExplorer(z)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        TemperatureExplorer(z, y).measure(0.0)
