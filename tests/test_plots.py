"""Figures: the yes/no map colours every pixel by its own verdict, and draws without error."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from segcal_lib import plots


def test_right_wrong_map_colours_each_pixel_by_its_verdict():
    label = torch.tensor([[0, 1, 255], [2, 2, 1]])
    pred = torch.tensor([[0, 0, 1], [2, 1, 1]])
    rgb = plots.right_wrong_map(pred, label)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    right, wrong, ignore = (np.asarray(c, dtype=np.uint8) for c in ((0, 114, 178), (213, 94, 0), plots.IGNORE_COLOR))
    expected = {(0, 0): right, (0, 1): wrong, (0, 2): ignore, (1, 0): right, (1, 1): wrong, (1, 2): right}
    for (i, j), colour in expected.items():
        np.testing.assert_array_equal(rgb[i, j], colour)
    assert len({tuple(c) for c in (right, wrong, ignore)}) == 3  # three distinct colours


def test_right_wrong_map_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shape"):
        plots.right_wrong_map(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))


def test_right_wrong_legend_names_the_three_colours():
    fig, ax = plt.subplots()
    legend = plots.right_wrong_legend(ax)
    assert [t.get_text() for t in legend.get_texts()] == ["correct", "wrong", "ignore"]
    plt.close(fig)


def test_right_wrong_legend_takes_other_names_for_the_same_colours_and_rejects_a_wrong_count():
    fig, ax = plt.subplots()
    default = plots.right_wrong_legend(ax)
    renamed = plots.right_wrong_legend(fig, names=("kept", "flagged", "ignore"))
    assert [t.get_text() for t in renamed.get_texts()] == ["kept", "flagged", "ignore"]
    colours = [tuple(h.get_facecolor()) for h in default.legend_handles]
    assert [tuple(h.get_facecolor()) for h in renamed.legend_handles] == colours
    with pytest.raises(ValueError, match="three labels"):
        plots.right_wrong_legend(ax, names=("yes", "no"))
    plt.close(fig)


def test_reliability_row_has_one_legend_under_the_panels_not_over_the_bars():
    from segcal_lib.metrics import CalibrationMeter

    meter = CalibrationMeter(4, classwise=False)
    gen = torch.Generator().manual_seed(0)
    meter.update(torch.randn(2, 4, 8, 8, generator=gen) * 3, torch.randint(0, 4, (2, 8, 8), generator=gen))
    res = meter.compute()
    fig = plots.reliability_row({"a": res, "b": res})
    assert all(ax.get_legend() is None for ax in fig.axes)
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["perfect calibration", "accuracy", "gap"]
    lowest_panel = min(ax.get_position().y0 for ax in fig.axes)
    assert legend.get_window_extent().y1 <= lowest_panel * fig.bbox.height + 1  # below every panel
    plt.close(fig)
