"""Figures of `flowmc_ebm.plots` read: nothing drawn over the numbers they print."""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg

from flowmc_ebm.diagnostics.weights import ModeWeights
from flowmc_ebm.plots import plot_mode_weights


def _weights(w, se, method):
    w, se = np.asarray(w), np.asarray(se)
    return ModeWeights(w, se, w - 1.96 * se, w + 1.96 * se, np.ones_like(w), method, 1000)


def _boxes(fig):
    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    (ax,) = fig.axes
    labels = [t.get_window_extent(renderer) for t in ax.texts if t.get_text()]
    legends = [leg.get_window_extent(renderer) for leg in [*fig.legends, ax.get_legend()] if leg]
    return ax, labels, legends


def test_mode_weight_legend_covers_no_value_label_and_labels_fit_in_the_axes():
    # The sample-a-density tutorial's numbers (truth 2/3 : 1/3), a four-mode case, a weight near
    # 1. Shown to fail: with the legend back in the axes' upper left (the old layout) the first
    # case's legend overlaps the labels above the mode-0 bars.
    cases = [({"chain occupancy": _weights([0.6657, 0.3343], [0.0025, 0.0025], "chains"),
               "importance sampling": _weights([0.667, 0.333], [0.0052, 0.0052], "importance")},
              [2 / 3, 1 / 3]),
             ({"chains": _weights([0.1, 0.2, 0.3, 0.4], [0.05, 0.04, 0.03, 0.06], "chains")},
              [0.1, 0.2, 0.3, 0.4]),
             ({"chains": _weights([0.97, 0.03], [0.01, 0.01], "chains")}, None)]
    for estimates, truth in cases:
        ax, labels, legends = _boxes(plot_mode_weights(estimates, truth))
        n_bars = sum(e.n_modes for e in estimates.values()) + (len(truth) if truth else 0)
        assert len(labels) == n_bars and len(legends) == 1
        inside = ax.get_window_extent()
        for box in labels:
            assert not box.overlaps(legends[0]), (box, legends[0])
            assert inside.y0 <= box.y0 and box.y1 <= inside.y1, "a value label leaves the axes"
