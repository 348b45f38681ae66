"""The input gradient: a full correlation of the output gradient with the kernel rotated by 180 degrees."""

import matplotlib.pyplot as plt
import numpy as np
from _grid import draw_grid

import convx

w = np.array([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
grad_y = np.array([[1.0, 0.0, 2.0], [0.0, -1.0, 0.0], [3.0, 0.0, 1.0]])
padded = np.pad(grad_y, 2)
grad_x = convx.conv2d_backward_input(grad_y[None, None], w[None, None], (1, 1, 5, 5))[0, 0]

fig, axes = plt.subplots(1, 3, figsize=(8, 3), gridspec_kw={"width_ratios": [7, 3, 5]})
draw_grid(axes[0], padded, "grad_y zero-padded by k - 1 = 2", cmap="RdBu", zero_grey=True,
          highlight=[(0, 0, 3, 3, "tab:red"), (2, 2, 3, 3, "tab:green")])
draw_grid(axes[1], w[::-1, ::-1], "kernel rotated 180°", cmap="RdBu")
draw_grid(axes[2], grad_x, "grad_x (5x5)", cmap="RdBu",
          highlight=[(0, 0, 1, 1, "tab:red"), (2, 2, 1, 1, "tab:green")])
fig.suptitle("grad_x = full correlation of grad_y with rot180(w)", fontsize=10)
fig.tight_layout()
