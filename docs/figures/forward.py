"""The forward pass as a cross-correlation: one window of x times the kernel gives one output."""

import matplotlib.pyplot as plt
import numpy as np
from _grid import draw_grid

import convx

x = np.arange(25, dtype=np.float64).reshape(5, 5) % 7
w = np.array([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
y = convx.conv2d(x[None, None], w[None, None])[0, 0]

fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.8), gridspec_kw={"width_ratios": [5, 3, 3]})
draw_grid(axes[0], x, "input x (5x5)", highlight=[(1, 2, 3, 3, "tab:red")])
draw_grid(axes[1], w, "kernel w (3x3)", cmap="RdBu", highlight=[(0, 0, 3, 3, "tab:red")])
draw_grid(axes[2], y, "y = conv2d(x, w) (3x3)", cmap="RdBu", highlight=[(1, 2, 1, 1, "tab:red")])
fig.suptitle("y[1, 2] = sum(x[1:4, 2:5] * w): no kernel flip", fontsize=10)
fig.tight_layout()
