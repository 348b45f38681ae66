"""Stride: dilate the output gradient with stride - 1 zeros, then treat it as a stride-1 gradient."""

import matplotlib.pyplot as plt
import numpy as np
from _grid import draw_grid

import convx

w = np.array([[1.0, 2.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 1.0]])
grad_y = np.array([[1.0, 2.0, -1.0], [3.0, -2.0, 1.0], [1.0, 1.0, 2.0]])  # stride-2 output of a 7x7 input
dilated = np.zeros((5, 5))
dilated[::2, ::2] = grad_y
grad_x = convx.conv2d_backward_input(grad_y[None, None], w[None, None], (1, 1, 7, 7), stride=2)[0, 0]

fig, axes = plt.subplots(1, 3, figsize=(8, 3), gridspec_kw={"width_ratios": [3, 5, 7]})
draw_grid(axes[0], grad_y, "grad_y, stride 2 (3x3)", cmap="RdBu")
draw_grid(axes[1], dilated, "dilated: the stride-1 gradient (5x5)", cmap="RdBu", zero_grey=True)
draw_grid(axes[2], grad_x, "grad_x (7x7)", cmap="RdBu")
fig.suptitle("stride s: insert s - 1 zeros between gradient entries, then backpropagate as stride 1", fontsize=10)
fig.tight_layout()
