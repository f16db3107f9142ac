"""The selective-scaling explorer: its numbers equal a meter fed directly, and the widget follows its sliders."""

import matplotlib.pyplot as plt
import pytest
import torch

from segcal_lib.calibrators.selective import apply_selective_scaling
from segcal_lib.metrics import CalibrationMeter
from segcal_lib.widgets_selective import SelectiveExplorer, before_after_figure


def _explorer():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 4, 10, 12, generator=g) * 3
    y = torch.randint(0, 4, (3, 10, 12), generator=g)
    y[:, 0] = 255
    q = torch.rand(3, 10, 12, generator=g)
    return SelectiveExplorer(z, y, q), z, y, q


def test_evaluate_equals_the_meter_on_the_scaled_logits():
    ex, z, y, q = _explorer()
    r = ex.evaluate(0.3, 5.0)
    ref = CalibrationMeter(4, classwise=False).update(apply_selective_scaling(z, q, 5.0, threshold=0.3), y).compute()
    assert r["image_ece"] == pytest.approx(ref["image_ece"], abs=1e-12)
    assert r["flagged_share"] == pytest.approx(float((q[y != 255] > 0.3).float().mean()))
    # T_mis = 1 is the base itself.
    base = CalibrationMeter(4, classwise=False).update(z, y).compute()
    assert ex.evaluate(0.5, 1.0)["pooled_ece"] == pytest.approx(base["ece"], abs=1e-12)


def test_bad_shapes_are_refused():
    _, z, y, q = _explorer()
    with pytest.raises(ValueError, match="mis_score"):
        SelectiveExplorer(z, y, q[:, :5])
    with pytest.raises(ValueError, match="labels"):
        SelectiveExplorer(z, y[0], q)


def test_widget_follows_its_sliders():
    ex, *_ = _explorer()
    box = ex.widget(index=1)
    assert ex.result["threshold"] == 0.5 and ex.result["t_mis"] == pytest.approx(1e10)
    first = bytes(box.children[2].value)
    assert first.startswith(b"\x89PNG")  # the image is a PNG in the widget's own state
    box.controls["threshold"].value = 0.8
    box.controls["log10_t_mis"].value = 0.0
    assert ex.result["threshold"] == 0.8 and ex.result["t_mis"] == 1.0
    assert ex.result == ex.evaluate(0.8, 1.0)
    assert "image-wise ECE" in box.children[1].value
    assert bytes(box.children[2].value) != first
    plt.close("all")


def test_static_figures_draw():
    ex, *_ = _explorer()
    fig = ex.grid_figure([0.3, 0.6], [1.0, 1e10], index=2, base_image_ece=0.1)
    assert len(fig.axes) >= 5
    fig2 = before_after_figure(ex, [0, 2], images=[torch.rand(3, 10, 12)] * 3)
    assert len(fig2.axes) >= 10
    plt.close("all")
