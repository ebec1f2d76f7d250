"""One colour and one marker per method, the same in every plot of a report and of ``compare``.

Built-in methods keep fixed styles, so LoRA is the same green in every report of every folder;
other methods (plugins, several configs of one method) take the remaining styles in name order.
A config of a built-in method (``lofit [learning_rate=0.01]``) keeps its method's colour and
takes its own marker.
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.lines

#: Fixed styles of the built-in methods (tab10 colours; the paper's method in red).
BUILTIN_STYLES = {
    "zero-shot": ("#7f7f7f", "o"),
    "lofit": ("#d62728", "*"),
    "iti": ("#1f77b4", "s"),
    "repe": ("#ff7f0e", "^"),
    "lora": ("#2ca02c", "D"),
    "full-ft": ("#9467bd", "v"),
    "red": ("#8c564b", "P"),
    "loreft": ("#e377c2", "X"),
}
#: Styles for every other method, taken in name order (then again with other markers).
SPARE_COLOURS = ("#17becf", "#bcbd22", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd",
                 "#e6550d", "#31a354", "#756bb1", "#636363")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")


@dataclass(frozen=True)
class MethodStyle:
    colour: str
    marker: str


def base_method(label: str) -> str:
    """``lofit [learning_rate=0.01]`` -> ``lofit`` (the report's label of one config)."""
    return label.split(" [", 1)[0]


def method_styles(labels: list[str]) -> dict[str, MethodStyle]:
    """A style per method label; the same label always gets the same style within one call, and
    a built-in method's plain label the same style in every call."""
    styles: dict[str, MethodStyle] = {}
    spare = 0
    for label in sorted(set(labels)):
        builtin = BUILTIN_STYLES.get(base_method(label))
        if builtin is not None and label == base_method(label):
            styles[label] = MethodStyle(*builtin)
        elif builtin is not None:  # a config of a built-in: its colour, another marker
            used = {style.marker for other, style in styles.items() if base_method(other) == base_method(label)}
            marker = next(marker for marker in (*MARKERS, *matplotlib.lines.Line2D.filled_markers) if marker not in used | {builtin[1]})
            styles[label] = MethodStyle(builtin[0], marker)
        else:
            styles[label] = MethodStyle(SPARE_COLOURS[spare % len(SPARE_COLOURS)], MARKERS[(spare // len(SPARE_COLOURS) + spare) % len(MARKERS)])
            spare += 1
    return styles


def legend_handles(styles: dict[str, MethodStyle], labels: list[str]):
    """Legend entries (marker and colour) for ``labels`` in the given order."""
    from matplotlib.lines import Line2D

    return [
        Line2D([], [], color=styles[label].colour, marker=styles[label].marker, linestyle="-", markersize=8, label=label)
        for label in labels
    ]


#: Font sizes that read at 1400 px without zooming (figures are drawn about 12 inches wide at 110 dpi).
PLOT_RC = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "xtick.labelsize": 10,
           "ytick.labelsize": 10, "legend.fontsize": 10, "figure.dpi": 110}
