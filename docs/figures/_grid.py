"""Shared drawing helper for the tutorial figures: a small array as a grid of labelled cells."""

import numpy as np
from matplotlib import patches


def draw_grid(ax, array, title, highlight=None, cmap="Blues", fmt="{:g}", zero_grey=False):
    """Draw a 2-D ``array`` as coloured cells with their values written in.

    ``highlight`` is a list of ``(row, col, height, width, colour)`` rectangles to outline;
    with ``zero_grey`` the cells holding exactly zero are drawn pale grey (inserted zeros,
    padding).
    """
    array = np.asarray(array, dtype=float)
    rows, cols = array.shape
    span = np.max(np.abs(array)) or 1.0
    ax.imshow(array, cmap=cmap, vmin=-span if array.min() < 0 else 0, vmax=span)
    for r in range(rows):
        for c in range(cols):
            value = array[r, c]
            if zero_grey and value == 0:
                ax.add_patch(patches.Rectangle((c - 0.5, r - 0.5), 1, 1, color="0.93"))
            strong = abs(value) > 0.6 * span
            ax.text(c, r, fmt.format(value), ha="center", va="center", fontsize=8,
                    color="white" if strong else "black")
    for r, c, h, w, colour in highlight or []:
        inset = 0.06  # so that neighbouring windows' outlines stay visible
        ax.add_patch(patches.Rectangle((c - 0.5 + inset, r - 0.5 + inset), w - 2 * inset, h - 2 * inset,
                                       fill=False, edgecolor=colour, linewidth=2.5))
    ax.set_xticks(np.arange(-0.5, cols, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, rows, 1), minor=True)
    ax.grid(which="minor", color="0.6", linewidth=0.6)
    ax.tick_params(which="both", bottom=False, left=False, labelbottom=False, labelleft=False)
    ax.set_title(title, fontsize=9)
