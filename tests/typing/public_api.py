"""Type-checked, never run: what ``mypy --strict`` infers for users of convx's public API.

CI runs mypy on this file together with the package (see ``[tool.mypy]`` in pyproject.toml).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from typing_extensions import assert_type

import convx

x32 = np.zeros((2, 3, 8, 8), dtype=np.float32)
w32 = np.zeros((4, 3, 3, 3), dtype=np.float32)
x64 = np.zeros((2, 3, 8, 8), dtype=np.float64)
w64 = np.zeros((4, 3, 3, 3), dtype=np.float64)

assert_type(convx.conv2d(x32, w32, padding="same"), npt.NDArray[np.float32])
assert_type(convx.conv2d(x64, w64, stride=(2, 1), dilation=2, groups=1), npt.NDArray[np.float64])
grad_x, grad_w, grad_b = convx.conv2d_backward(np.ones((2, 4, 6, 6), dtype=np.float32), x32, w32)
assert_type(grad_w, npt.NDArray[np.float32])
assert_type(convx.conv2d_backward_input(np.ones((2, 4, 6, 6)), w64, (2, 3, 8, 8)), npt.NDArray[np.float64])
assert_type(convx.conv_transpose2d(x32, np.zeros((3, 4, 2, 2), dtype=np.float32), stride=2), npt.NDArray[np.float32])
assert_type(convx.get_num_threads(), int)
assert_type(convx.__version__, str)
assert_type(convx.max_pool2d(x32, 2), npt.NDArray[np.float32])
pooled, indices = convx.max_pool2d(x64, 3, stride=2, padding=1, return_indices=True)
assert_type(pooled, npt.NDArray[np.float64])
assert_type(indices, npt.NDArray[np.int64])
assert_type(convx.max_pool2d_backward(pooled, indices, x64.shape), npt.NDArray[np.float64])
assert_type(convx.avg_pool2d(x32, (2, 2), count_include_pad=False), npt.NDArray[np.float32])
assert_type(convx.avg_pool2d_backward(np.ones((2, 3, 4, 4)), x64.shape, 2), npt.NDArray[np.float64])
assert_type(convx.adaptive_avg_pool2d(x32, (4, None)), npt.NDArray[np.float32])
assert_type(convx.adaptive_max_pool2d(x32, 1, return_indices=True)[1], npt.NDArray[np.int64])
u8 = np.zeros((2, 3, 8, 8), dtype=np.uint8)
assert_type(convx.max_pool2d(u8, 2), npt.NDArray[np.uint8])
assert_type(convx.max_pool1d(np.zeros((2, 3, 8), dtype=np.int8), 2, return_indices=True)[0], npt.NDArray[np.int8])
assert_type(convx.adaptive_max_pool2d(u8, 1), npt.NDArray[np.uint8])
v32 = np.zeros((2, 3, 4, 8, 8), dtype=np.float32)
assert_type(convx.max_pool3d(v32, 2), npt.NDArray[np.float32])
volume_pooled, volume_indices = convx.max_pool3d(v32, (1, 2, 2), return_indices=True)
assert_type(volume_indices, npt.NDArray[np.int64])
assert_type(convx.max_pool3d_backward(volume_pooled, volume_indices, v32.shape), npt.NDArray[np.float32])
assert_type(convx.avg_pool3d(v32, 3, 2, 1, ceil_mode=True, divisor_override=4), npt.NDArray[np.float32])
assert_type(convx.adaptive_avg_pool3d(v32, (1, None, 2)), npt.NDArray[np.float32])
assert_type(convx.adaptive_max_pool3d(v32, 1, return_indices=True)[1], npt.NDArray[np.int64])
assert_type(convx.max_pool3d(v32, 3, 1, ((1, 0), (2, 2), (0, 1)), layout="NDHWC"), npt.NDArray[np.float32])
assert_type(convx.max_pool3d(v32, 2, padding="same", return_indices=True, layout="NDHWC")[1], npt.NDArray[np.int64])
assert_type(convx.avg_pool3d(v32, 3, 2, "same_lower", dilation=(1, 2, 1), layout="NDHWC"), npt.NDArray[np.float32])
assert_type(convx.lp_pool3d(v32, 2, 2, padding=((0, 1), (1, 0), (1, 1)), layout="NDHWC"), npt.NDArray[np.float32])
assert_type(convx.adaptive_avg_pool3d_backward(v32, v32.shape, layout="NDHWC"), npt.NDArray[np.float32])
assert_type(convx.interpolate(x32, scale_factor=2.0, mode="bilinear", align_corners=True), npt.NDArray[np.float32])
assert_type(convx.interpolate_backward(np.ones((2, 3, 4, 4)), (2, 3, 8, 8), size=4), npt.NDArray[np.float64])
assert_type(convx.pad(x32, (1, 1, 2, 0), mode="reflect"), npt.NDArray[np.float32])
assert_type(convx.pad_backward(x64, (2, 3, 6, 8), (0, 0, 1, 1)), npt.NDArray[np.float64])
assert_type(convx.pixel_shuffle(x32, 1), npt.NDArray[np.float32])

# The layers, losses and optimizers.
model = convx.nn.Sequential(
    convx.nn.Conv2d(3, 4, 3, padding="same", rng=0), convx.nn.ReLU(), convx.nn.MaxPool2d(2),
    convx.nn.Flatten(), convx.nn.Linear(4 * 4 * 4, 10, rng=np.random.default_rng(0)),
)
optimizer = convx.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
loss_fn = convx.nn.CrossEntropyLoss()
logits = model(x32)
assert_type(logits, npt.NDArray[Any])
loss = loss_fn(logits, np.zeros(2, dtype=np.int64))
assert_type(loss, float)
model.backward(loss_fn.backward())
optimizer.step()
assert_type(model[0], convx.nn.Module)
assert_type(model[1:], convx.nn.Sequential)
assert_type(convx.gradcheck(convx.nn.Tanh(), np.zeros(3)), bool)

# Learning-rate schedulers and gradient clipping.
scheduler = convx.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.5, total_steps=10)
scheduler.step()
assert_type(scheduler.get_last_lr(), list[float])
plateau = convx.optim.ReduceLROnPlateau(convx.optim.Adam(model.parameters()), mode="max", patience=2)
plateau.step(0.5)
assert_type(convx.nn.utils.clip_grad_norm_(model.parameters(), 1.0, norm_type="inf"), float)
assert_type(convx.nn.utils.clip_grad_value_(model.parameters()[0], 0.1), None)
assert_type(convx.nn.utils.parameters_to_vector(model.parameters()), npt.NDArray[Any])
