"""Interactive explorers with static fallbacks, for chapters read with or without a running kernel.

Every explorer is a small class with three parts: ``measure(value)`` (the numbers, a plain function of its input, so
tests can call it), ``widget`` (ipywidgets controls wired to ``update``; live in Jupyter and Colab) and
``static_figure(values)`` (a matplotlib figure of a few settings side by side). ``show()`` displays both: the widget
for a reader with a kernel and the figure for the built HTML book, where no kernel runs and a widget cannot update.

>>> ex = TemperatureExplorer(test_store)          # doctest: +SKIP
>>> ex.show()                                     # doctest: +SKIP
>>> ex.slider.value = 2.0; ex.numbers["nll"]      # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch

from segcal_lib.calibrators.sampling import as_batches
from segcal_lib.metrics import CalibrationMeter
from segcal_lib.plots import reliability_diagram

__all__ = ["TemperatureExplorer", "temperature_explorer"]


def _display(obj) -> None:
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return
    if get_ipython() is not None:
        display(obj)


class TemperatureExplorer:
    """A slider for the temperature T; shows the reliability diagram, pooled and image-wise ECE and NLL of
    ``softmax(logits / T)``.

    Parameters
    ----------
    source : logits tensor (N, C, H, W) with ``labels`` (N, H, W), a :class:`~segcal_lib.logit_store.LogitStore`,
        or a re-iterable of ``(logits, labels)`` batches (read again at every update).
    labels : int tensor (N, H, W) when ``source`` is a tensor.
    t_range : (min, max) of the slider, default (0.25, 4.0); the slider is logarithmic.
    value : starting temperature, default 1.0 (the uncalibrated model).
    n_bins : ECE bins (equal-width), default 10.

    Attributes
    ----------
    slider : ``ipywidgets.FloatLogSlider`` (None without ipywidgets).
    numbers : dict of the last measurement (``temperature``, ``ece``, ``image_ece``, ``nll``, ``brier``).
    """

    def __init__(self, source, labels: torch.Tensor | None = None, t_range: tuple[float, float] = (0.25, 4.0),
                 value: float = 1.0, n_bins: int = 10):
        lo, hi = t_range
        if not 0 < lo < hi or not lo <= value <= hi:
            raise ValueError(f"t_range must be (min, max) with 0 < min < max and value within it, got {t_range} "
                             f"and value={value}")
        if isinstance(source, torch.Tensor) and labels is None:
            raise ValueError("labels must be given with a logits tensor")
        self.source, self.labels, self.t_range, self.n_bins = source, labels, (lo, hi), n_bins
        self.slider = self.widget = self._out = self._text = None
        self.numbers: dict = {}
        self._build_widget(value)
        self.update(value)

    # ------------------------------------------------------------------------------------------------ numbers
    def measure(self, temperature: float) -> dict:
        """The metrics of ``softmax(logits / temperature)``: ``CalibrationMeter.compute()`` plus ``temperature``."""
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        batches, _ = as_batches(self.source, self.labels)
        meter = None
        for logits, labels, _ in batches:
            meter = meter or CalibrationMeter(logits.shape[1], n_bins=self.n_bins, classwise=False)
            meter.update(logits / temperature, labels)
        if meter is None:
            raise ValueError("source holds no batch")
        return {**meter.compute(), "temperature": float(temperature)}

    def update(self, temperature: float) -> dict:
        """Measure at ``temperature``, refresh ``numbers`` and (with ipywidgets) the text and the figure."""
        res = self.measure(temperature)
        self.numbers = {k: res[k] for k in ("temperature", "ece", "image_ece", "nll", "brier")}
        if self._text is not None:
            self._text.value = self._summary(res)
            with self._out:
                self._out.clear_output(wait=True)
                fig, ax = plt.subplots(figsize=(4, 4))
                reliability_diagram(res, ax=ax, title=f"T = {temperature:.2f}")
                _display(fig)
                plt.close(fig)
        return self.numbers

    @staticmethod
    def _summary(res: dict) -> str:
        return (f"T = {res['temperature']:.3f} &nbsp; pooled ECE {res['ece']:.4f} &nbsp; image-wise ECE "
                f"{res['image_ece']:.4f} &nbsp; NLL {res['nll']:.4f} &nbsp; ({res['n_bins']} equal-width bins)")

    # ------------------------------------------------------------------------------------------------ views
    def _build_widget(self, value: float) -> None:
        try:
            import ipywidgets as w
        except ImportError:  # e.g. a runtime without the book extra: the static figure still works
            return
        lo, hi = self.t_range
        self.slider = w.FloatLogSlider(value=value, base=10, min=math.log10(lo), max=math.log10(hi), step=0.01,
                                       description="T", continuous_update=False, readout_format=".2f")
        self._text, self._out = w.HTML(), w.Output()
        self.slider.observe(lambda change: self.update(change["new"]), names="value")
        self.widget = w.VBox([self.slider, self._text, self._out])

    def static_figure(self, temperatures: Sequence[float] = (0.5, 1.0, 2.0)):
        """Reliability diagrams at a few temperatures, side by side; each title gives T, both ECEs and the NLL."""
        fig, axes = plt.subplots(1, len(temperatures), figsize=(2.4 * len(temperatures), 2.9), squeeze=False)
        for ax, t in zip(axes[0], temperatures, strict=True):
            res = self.measure(t)
            reliability_diagram(res, ax=ax, title=f"T = {t:g}\nECE {res['ece']:.3f} | img {res['image_ece']:.3f}"
                                f" | NLL {res['nll']:.3f}")
            ax.title.set_fontsize(9)
            if ax is axes[0][0]:
                ax.legend(loc="upper left", fontsize=7)
            else:
                ax.get_legend().remove()
        fig.tight_layout()
        return fig

    def show(self, temperatures: Sequence[float] = (0.5, 1.0, 2.0)):
        """Display the live widget (where a kernel runs) and the static figure (which the built book shows).

        Returns the static figure.
        """
        if self.widget is not None:
            _display(self.widget)
        return self.static_figure(temperatures)


def temperature_explorer(source, labels: torch.Tensor | None = None, temperatures: Sequence[float] = (0.5, 1.0, 2.0),
                         **kw) -> TemperatureExplorer:
    """Make a :class:`TemperatureExplorer` and :meth:`~TemperatureExplorer.show` it; returns the explorer."""
    ex = TemperatureExplorer(source, labels, **kw)
    ex.show(temperatures)
    return ex
