"""A small convolutional network in plain NumPy, run on the classroom layers or on convx.

    conv 5x5 (pad 2) - relu - 2x2 max pool - affine - relu - affine - softmax

``python small_convnet.py`` times one forward/backward pass with each set of layers, checks
that they agree, trains the convx version for a few steps on synthetic data and, with
``--plot FILE.png`` (needs matplotlib: ``pip install ".[examples]"``), draws its loss
curve. See ``docs/tutorials/numpy_cnn.rst``.
"""

import argparse
import time

import numpy as np

import classroom_layers as classroom
import convx_layers

NAIVE = {
    "conv_forward": classroom.conv_forward_naive, "conv_backward": classroom.conv_backward_naive,
    "pool_forward": classroom.max_pool_forward_naive, "pool_backward": classroom.max_pool_backward_naive,
}
FAST = {
    "conv_forward": convx_layers.conv_forward_fast, "conv_backward": convx_layers.conv_backward_fast,
    "pool_forward": convx_layers.max_pool_forward_fast, "pool_backward": convx_layers.max_pool_backward_fast,
}


def init_params(input_dim=(3, 32, 32), num_filters=16, hidden_dim=64, num_classes=10, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    C, H, W = input_dim
    params = {
        "W1": rng.standard_normal((num_filters, C, 5, 5)) * np.sqrt(2 / (C * 25)),
        "b1": np.zeros(num_filters),
        "W2": rng.standard_normal((num_filters * (H // 2) * (W // 2), hidden_dim)) * 0.01,
        "b2": np.zeros(hidden_dim),
        "W3": rng.standard_normal((hidden_dim, num_classes)) * 0.01,
        "b3": np.zeros(num_classes),
    }
    return {name: value.astype(dtype) for name, value in params.items()}


def loss_and_grads(params, X, y, layers):
    """Softmax loss of the network on (X, y) and the gradient of every parameter."""
    conv_param = {"stride": 1, "pad": 2}
    pool_param = {"pool_height": 2, "pool_width": 2, "stride": 2}
    conv, conv_cache = layers["conv_forward"](X, params["W1"], params["b1"], conv_param)
    act1, relu1_cache = classroom.relu_forward(conv)
    pooled, pool_cache = layers["pool_forward"](act1, pool_param)
    hidden, affine1_cache = classroom.affine_forward(pooled, params["W2"], params["b2"])
    act2, relu2_cache = classroom.relu_forward(hidden)
    scores, affine2_cache = classroom.affine_forward(act2, params["W3"], params["b3"])
    loss, dscores = classroom.softmax_loss(scores, y)

    grads = {}
    dact2, grads["W3"], grads["b3"] = classroom.affine_backward(dscores, affine2_cache)
    dhidden = classroom.relu_backward(dact2, relu2_cache)
    dpooled, grads["W2"], grads["b2"] = classroom.affine_backward(dhidden, affine1_cache)
    dact1 = layers["pool_backward"](dpooled, pool_cache)
    dconv = classroom.relu_backward(dact1, relu1_cache)
    _, grads["W1"], grads["b1"] = layers["conv_backward"](dconv, conv_cache)
    return loss, grads


def best_time(function, repeat=3):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--plot", metavar="FILE.png")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(1)
    X = rng.standard_normal((args.batch, 3, 32, 32))
    y = rng.integers(0, 10, size=args.batch)
    params = init_params()

    naive_loss, naive_grads = loss_and_grads(params, X, y, NAIVE)
    fast_loss, fast_grads = loss_and_grads(params, X, y, FAST)
    worst = max(np.max(np.abs(naive_grads[k] - fast_grads[k])) for k in params)
    print(f"loss {naive_loss:.6f} (classroom) vs {fast_loss:.6f} (convx); largest gradient difference {worst:.1e}")

    naive = best_time(lambda: loss_and_grads(params, X, y, NAIVE), repeat=1)
    fast64 = best_time(lambda: loss_and_grads(params, X, y, FAST))
    params32 = {k: v.astype(np.float32) for k, v in params.items()}
    X32 = X.astype(np.float32)
    fast32 = best_time(lambda: loss_and_grads(params32, X32, y, FAST))
    print(f"forward + backward, batch {args.batch}:")
    print(f"  classroom loops, float64  {naive * 1e3:9.1f} ms")
    print(f"  convx,           float64  {fast64 * 1e3:9.1f} ms   ({naive / fast64:.0f}x)")
    print(f"  convx,           float32  {fast32 * 1e3:9.1f} ms   ({naive / fast32:.0f}x)")

    losses = []
    for _ in range(args.steps):
        loss, grads = loss_and_grads(params32, X32, y, FAST)
        for name in params32:
            params32[name] -= 0.05 * grads[name]
        losses.append(loss)
    print(f"SGD with convx layers: loss {losses[0]:.3f} -> {losses[-1]:.3f} in {args.steps} steps")

    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3))
        ax.plot(losses)
        ax.set_xlabel("SGD step")
        ax.set_ylabel("training loss")
        fig.tight_layout()
        fig.savefig(args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
