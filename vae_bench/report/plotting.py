"""Plot helpers every report figure shares: off-screen pyplot, atomic PNG writes, colors, legends,
and axes labelled with plain numbers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, also on machines without a display
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: Path) -> Path:
    """Render to a temporary file, then rename: a reader never sees half a PNG."""
    plt = pyplot()
    tmp = path.with_name(f".{path.name}.tmp")
    figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)
    os.replace(tmp, path)
    return path


def colors(count: int):
    plt = pyplot()
    cmap = plt.get_cmap("tab10" if count <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(count)]


def legend(axis, count: int) -> None:
    if count:
        axis.legend(fontsize="small" if count <= 8 else "x-small", loc="best",
                    ncol=1 if count <= 10 else 2)


def plain_number(value: float, _position=None) -> str:
    return f"{value:g}"


def plain_linear(axis) -> None:
    """No offset and no ×10^k: values such as -105.62..-105.50 are read as they are."""
    from matplotlib.ticker import ScalarFormatter

    formatter = ScalarFormatter(useOffset=False)
    formatter.set_scientific(False)
    axis.set_major_formatter(formatter)


def plain_log(axis, values) -> None:
    """A log axis labelled `3` and `0.01`, not `3×10^0`. Within a decade every minor tick gets a
    label (there may be no power of ten in view, and the view is widened to hold a few ticks);
    over up to three decades the 2s and 5s do; beyond that only the powers of ten."""
    from matplotlib.ticker import FuncFormatter

    positive = [v for v in values if v > 0]
    span = max(positive) / min(positive) if positive else 1e9
    labelled = {2, 3, 4, 5, 6, 7, 8, 9} if span < 10 else {2, 5} if span < 1000 else set()

    def minor_label(value: float, _position=None) -> str:
        mantissa = round(value / 10 ** np.floor(np.log10(value)))
        return plain_number(value) if mantissa in labelled else ""

    axis.set_major_formatter(FuncFormatter(plain_number))
    axis.set_minor_formatter(FuncFormatter(minor_label))
    if positive and span < 3:
        setter = axis.axes.set_ylim if axis is axis.axes.yaxis else axis.axes.set_xlim
        setter(min(positive) / 1.5, max(positive) * 1.5)


def integer_ticks(axis, values) -> None:
    """Epochs and steps are whole numbers; a single epoch is one labelled tick, not 0.96..1.04."""
    values = sorted(set(values))
    if values and len(values) <= 12:
        axis.set_ticks(values)
        if len(values) == 1:
            setter = axis.axes.set_xlim if axis is axis.axes.xaxis else axis.axes.set_ylim
            setter(values[0] - 1, values[0] + 1)
    else:
        axis.get_major_locator().set_params(integer=True)
