"""How max and average pooling route the output gradient back to their input."""

import matplotlib.pyplot as plt
import numpy as np
from _grid import draw_grid

import convx

x = np.array([[1.0, 3.0, 2.0, 0.0],
              [4.0, 2.0, 1.0, 1.0],
              [0.0, 5.0, 2.0, 6.0],
              [1.0, 2.0, 7.0, 3.0]])[None, None]
grad_y = np.array([[1.0, 2.0], [3.0, 4.0]])[None, None]
pooled, indices = convx.max_pool2d(x, 2, return_indices=True)
grad_max = convx.max_pool2d_backward(grad_y, indices, x.shape)
grad_avg = convx.avg_pool2d_backward(grad_y, x.shape, 2)

windows = [(0, 0, 2, 2, "tab:red"), (0, 2, 2, 2, "tab:green"), (2, 0, 2, 2, "tab:orange"), (2, 2, 2, 2, "tab:purple")]
fig, axes = plt.subplots(1, 4, figsize=(9, 3), gridspec_kw={"width_ratios": [4, 2, 4, 4]})
draw_grid(axes[0], x[0, 0], "input x", highlight=windows)
draw_grid(axes[1], grad_y[0, 0], "grad_y (2x2)", cmap="Greens")
draw_grid(axes[2], grad_max[0, 0], "max pool: grad to the argmax", cmap="Greens", zero_grey=True, highlight=windows)
draw_grid(axes[3], grad_avg[0, 0], "avg pool: grad / k² to all", cmap="Greens", highlight=windows)
fig.suptitle("each window's gradient goes to its maximum (max) or is shared equally (average)", fontsize=10)
fig.tight_layout()
