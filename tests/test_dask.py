"""convx.dask: batch inference, tiled convolution and data-parallel training on Dask.

A real ``distributed.LocalCluster`` (two worker processes of one thread each, loopback only) is
started once for the module; the geometry sweeps of the tiled convolution run on the synchronous
scheduler (same code path per tile, no cluster round trips). Everything is compared with the same
convx call on the whole array in memory.
"""

import doctest
import functools
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

import convx  # noqa: E402
import convx.dask as cd  # noqa: E402
from convx import nn, optim  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# Seconds: bounds for a loaded two-core machine.
CLUSTER_TIMEOUT = 120
# The scheduler's HTTP server (metrics; no dashboard without bokeh) on a free loopback port: with
# dashboard_address=None distributed still takes port 8787, and where another cluster on the
# machine holds it, says so with a warning (an error in this suite).
HTTP = "127.0.0.1:0"


@pytest.fixture(scope="module")
def client():
    # Dask's nanny puts OMP_NUM_THREADS=1 (and the BLAS counts) into this process's environment
    # for its workers to inherit, and leaves them there: later tests' subprocesses must not.
    environ = dict(os.environ)
    with dask.config.set({"distributed.comm.timeouts.connect": "60s"}):
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=HTTP,
            timeout=CLUSTER_TIMEOUT,
        )
        client = distributed.Client(cluster, timeout=CLUSTER_TIMEOUT)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
        os.environ.clear()
        os.environ.update(environ)


def synchronous():
    return dask.config.set(scheduler="synchronous")


def relative_error(got, expected):
    return float(np.abs(got.astype(np.float64) - expected).max() / max(np.abs(expected).max(), 1e-30))


def classifier(dtype=np.float32, batch_norm=True):
    layers = [nn.Conv2d(3, 8, 3, padding=1, dtype=dtype, rng=0)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(8, dtype=dtype))
    layers += [nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, dtype=dtype, rng=1), nn.ReLU(),
               nn.GlobalAvgPool2d(), nn.Linear(8, 5, dtype=dtype, rng=2)]
    return nn.Sequential(*layers)


# -- predict --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_predict_equals_in_memory_chunk_by_chunk(client, dtype):
    model = classifier(dtype)
    bn = model[1]
    rng = np.random.default_rng(0)
    bn.buffers["running_mean"][:] = rng.standard_normal(8)
    bn.buffers["running_var"][:] = rng.uniform(0.5, 2, 8)
    images = rng.standard_normal((23, 3, 12, 12)).astype(dtype)
    y = cd.predict(model, da.from_array(images, chunks=(7, 3, 12, 12)))
    assert y.shape == (23, 5) and y.dtype == dtype and y.chunks == ((7, 7, 7, 2), (5,))
    assert model.training, "predict must not change the caller's model"
    got = y.compute()
    model.eval()
    with nn.no_grad():
        expected = np.concatenate([model(images[start:start + 7]) for start in range(0, 23, 7)])
    assert np.array_equal(got, expected)
    with nn.no_grad():
        np.testing.assert_allclose(got, model(images), rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)


def test_predict_batch_chunks_and_a_function_with_meta(client):
    rng = np.random.default_rng(1)
    images = rng.standard_normal((10, 2, 9, 9)).astype(np.float32)
    weight = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    run = functools.partial(convx.conv2d, weight=weight, padding=1)
    y = cd.predict(run, da.from_array(images, chunks=(10, 2, 9, 9)), batch_chunks=3,
                   meta=np.empty((1, 4, 9, 9), np.float32))
    assert y.chunks == ((3, 3, 3, 1), (4,), (9,), (9,)) and y.dtype == np.float32
    expected = np.concatenate([run(images[start:start + 3]) for start in range(0, 10, 3)])
    assert np.array_equal(y.compute(), expected)


def test_predict_on_the_cluster_sends_the_model_once(client):
    """The model is one key of the graph that every task reads, not a copy in each task."""
    import cloudpickle

    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 4096, rng=0))  # 0.8 MB of weights
    x = da.zeros((64, 3, 4, 4), dtype=np.float32, chunks=(4, 3, 4, 4))
    y = cd.predict(model, x)
    graph = dict(y.__dask_graph__())
    tasks = [task for key, task in graph.items() if "predict_block" in str(key)]
    shared = set.intersection(*(set(task.dependencies) for task in tasks))
    assert len(tasks) == 16 and len(shared) == 1
    assert len(cloudpickle.dumps(graph)) < 2 * 48 * 4096 * 4  # one model, not sixteen
    assert y.compute().shape == (64, 4096)


def test_predict_runs_convx_on_the_workers_thread_budget(client):
    """distributed gives each worker process OMP_NUM_THREADS=1 (threads_per_worker=1 here):
    every task of convx.dask runs convx on one thread there."""

    def counts(batch):
        import os

        import convx as cx
        return np.array([[cx.get_num_threads(), int(os.environ.get("OMP_NUM_THREADS", "-1"))]] * len(batch))

    y = cd.predict(counts, da.zeros((4, 1, 2, 2), dtype=np.float32, chunks=(1, 1, 2, 2)),
                   meta=np.empty((1, 2), np.int64))
    assert (y.compute() == 1).all()
    assert client.submit(cd.worker_threads, pure=False).result() == 1
    assert cd.worker_threads() is None  # not in a worker


def test_predict_on_a_worker_with_two_threads():
    """Two tasks of one worker run side by side, each on its own copy of the model."""
    model = classifier().eval()
    images = np.random.default_rng(10).standard_normal((32, 3, 12, 12)).astype(np.float32)
    with nn.no_grad():
        expected = np.concatenate([model(images[start:start + 2]) for start in range(0, 32, 2)])
    environ = dict(os.environ)
    try:
        with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True, host="127.0.0.1",
                                      dashboard_address=HTTP, timeout=CLUSTER_TIMEOUT) as cluster, \
                distributed.Client(cluster, set_as_default=False) as local:
            for _ in range(2):
                y = cd.predict(model, da.from_array(images, chunks=(2, 3, 12, 12)))
                assert np.array_equal(local.compute(y).result(), expected)
            assert local.submit(cd.worker_threads, pure=False).result() == 1
    finally:
        os.environ.clear()
        os.environ.update(environ)


# -- tiled convolution ----------------------------------------------------------------------

GEOMETRIES = [
    # kernel, stride, padding, dilation, groups, H, W, chunks (H, W)
    (3, 1, 1, 1, 1, 37, 41, (10, 16)),
    (5, 1, 2, 1, 1, 50, 33, (16, 12)),
    (3, 1, 0, 1, 1, 31, 29, (8, 9)),
    (5, 1, 0, 1, 2, 30, 27, (11, 8)),
    (3, 1, 2, 2, 1, 45, 40, (12, 14)),
    (3, 1, "same", 2, 1, 40, 31, (12, 11)),
    (4, 1, "same", 1, 1, 30, 30, (9, 8)),
    (3, 1, "valid", 1, 1, 19, 23, (6, 7)),
    (3, 2, 1, 1, 1, 51, 47, (16, 12)),
    (5, 2, 0, 1, 1, 63, 40, (20, 16)),
    (5, 2, 2, 2, 1, 64, 45, (16, 14)),
    (3, 3, 1, 1, 1, 49, 50, (15, 18)),
    (3, 1, ((2, 0), (1, 3)), 1, 1, 33, 35, (10, 12)),
    (4, 1, "same_lower", 1, 1, 30, 29, (9, 10)),
    (3, 2, ((0, 1), (1, 0)), 1, 1, 40, 38, (12, 14)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=[str(g[:5]).replace(" ", "") for g in GEOMETRIES])
def test_tiled_conv2d_equals_in_memory(geometry, dtype):
    kernel, stride, padding, dilation, groups, height, width, chunks = geometry
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 4, height, width)).astype(dtype)
    weight = rng.standard_normal((6, 4 // groups, kernel, kernel)).astype(dtype)
    bias = rng.standard_normal(6).astype(dtype)
    y = cd.conv2d(da.from_array(x, chunks=(1, 4, *chunks)), weight, bias, stride, padding, dilation, groups)
    expected = convx.conv2d(x, weight, bias, stride, padding, dilation, groups)
    assert y.shape == expected.shape and y.dtype == dtype
    with synchronous():
        got = y.compute()
    # The same kernel runs on tile and whole here: bitwise; 1e-6 relative is the contract.
    assert relative_error(got, expected) <= (1e-6 if dtype == np.float32 else 1e-13)
    assert np.array_equal(got, expected)


def test_tiled_conv2d_of_one_image_without_batch_axis():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 33, 20)).astype(np.float32)
    weight = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)
    y = cd.conv2d(da.from_array(x, chunks=(3, 11, 10)), weight, padding=1)
    with synchronous():
        assert np.array_equal(y.compute(), convx.conv2d(x, weight, padding=1))


def test_chunks_smaller_than_the_halo_join_a_neighbour():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((1, 2, 40, 30)).astype(np.float32)
    weight = rng.standard_normal((3, 2, 9, 9)).astype(np.float32)
    y = cd.conv2d(da.from_array(x, chunks=(1, 2, (3, 15, 20, 2), (10, 10, 10))), weight, padding=4)
    assert y.chunks[2:] == ((18, 22), (10, 10, 10))
    with synchronous():
        assert np.array_equal(y.compute(), convx.conv2d(x, weight, padding=4))


def fcn(dtype=np.float32):
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, dtype=dtype, rng=0), nn.BatchNorm2d(8, dtype=dtype), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 5, padding=4, dilation=2, dtype=dtype, rng=1), nn.ReLU(),
        nn.Conv2d(8, 1, 3, padding=1, dtype=dtype, rng=2),
    )
    rng = np.random.default_rng(4)
    net[1].buffers["running_mean"][:] = rng.standard_normal(8)
    net[1].buffers["running_var"][:] = rng.uniform(0.5, 2, 8)
    return net.eval()


def test_tiled_fcn_equals_in_memory_on_the_cluster(client):
    net = fcn()
    image = np.random.default_rng(5).standard_normal((1, 3, 512, 512)).astype(np.float32)
    y = cd.predict_tiled(net, da.from_array(image, chunks=(1, 3, 128, 128)))
    assert y.shape == (1, 1, 256, 256) and y.chunks[2:] == ((64,) * 4, (64,) * 4)
    got = y.compute()
    with nn.no_grad():
        expected = net(image)
    assert relative_error(got, expected) <= 1e-6


@pytest.mark.parametrize("layers, shape, chunks", [
    # strided convolution then stride-2 average pooling: total stride 4; odd sizes, ragged chunks
    ([nn.Conv2d(2, 4, 3, stride=2, padding=1, rng=0), nn.Tanh(), nn.AvgPool2d(3, 2, padding=1),
      nn.Conv2d(4, 1, 1, rng=1)], (2, 2, 77, 61), (20, 16)),
    # ceil_mode pooling, a nested Sequential and a padding larger than the kernel's reach
    ([nn.Sequential(nn.Conv2d(2, 3, 3, padding=2, rng=0), nn.LeakyReLU(0.1)),
      nn.MaxPool2d(3, 2, padding=1, ceil_mode=True), nn.Dropout(0.5), nn.Conv2d(3, 2, 5, padding="same", rng=1)],
     (1, 2, 45, 50), (12, 14)),
    # pooling padded per side, up to the kernel less one, with ceil_mode; dilated average pooling
    ([nn.Conv2d(2, 3, 3, rng=0), nn.MaxPool2d(3, 2, ((2, 0), (1, 2)), ceil_mode=True),
      nn.AvgPool2d(2, 1, ((0, 2), (2, 1)), dilation=2, count_include_pad=False), nn.Conv2d(3, 1, 1, rng=1)],
     (1, 2, 41, 39), (12, 14)),
    # no padding anywhere: the output is smaller, the last chunks give little or nothing
    ([nn.Conv2d(2, 3, 5, rng=0), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(3, 1, 3, dilation=2, rng=1)],
     (1, 2, 60, 47), (16, 12)),
])
def test_tiled_nets_equal_in_memory(layers, shape, chunks):
    net = nn.Sequential(*layers).eval()
    image = np.random.default_rng(6).standard_normal(shape).astype(np.float32)
    y = cd.predict_tiled(net, da.from_array(image, chunks=(1, shape[1], *chunks)))
    with nn.no_grad():
        expected = net(image)
    assert y.shape == expected.shape
    with synchronous():
        got = y.compute()
    assert relative_error(got, expected) <= 1e-6


# -- data-parallel training -----------------------------------------------------------------


def training_net(dtype=np.float32):
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, dtype=dtype, rng=0), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, dtype=dtype, rng=1), nn.Tanh(), nn.GlobalAvgPool2d(), nn.Linear(8, 4, dtype=dtype, rng=2),
    )


@pytest.mark.parametrize("loss_fn, sizes", [
    (nn.CrossEntropyLoss(), (7, 5)),
    (nn.CrossEntropyLoss(weight=np.array([1.0, 2.0, 0.5, 1.5], np.float32), reduction="mean"), (6, 6, 4)),
    (nn.CrossEntropyLoss(reduction="sum"), (9, 3)),
])
def test_train_step_equals_the_single_process_step(client, loss_fn, sizes):
    rng = np.random.default_rng(7)
    n = sum(sizes)
    x = rng.standard_normal((n, 3, 10, 10)).astype(np.float32)
    target = rng.integers(0, 4, n)
    single, parallel = training_net(), training_net()
    single_opt = optim.SGD(single.parameters(), lr=0.1, momentum=0.9)
    parallel_opt = optim.SGD(parallel.parameters(), lr=0.1, momentum=0.9)
    bounds = np.cumsum((0, *sizes))
    x_shards = [x[a:b] for a, b in zip(bounds, bounds[1:])]
    y_shards = client.scatter([target[a:b] for a, b in zip(bounds, bounds[1:])])
    for _ in range(2):
        expected_loss = loss_fn(single(x), target)
        single.backward(loss_fn.backward())
        expected_grads = {name: p.grad.copy() for name, p in single.named_parameters()}
        single_opt.step()
        loss = cd.train_step(client, parallel, loss_fn, parallel_opt, x_shards, y_shards)
        assert abs(loss - expected_loss) <= 1e-6 * abs(expected_loss)
        for name, p in parallel.named_parameters():
            scale = np.abs(expected_grads[name]).max()
            assert np.abs(p.grad - expected_grads[name]).max() <= 1e-6 * scale, name
        for (name, a), b in zip(parallel.state_dict().items(), single.state_dict().values()):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * np.abs(b).max(), err_msg=name)


def test_train_step_averages_batch_norm_running_means(client):
    net = nn.Sequential(nn.Conv2d(2, 3, 3, rng=0), nn.BatchNorm2d(3), nn.GlobalAvgPool2d(), nn.Linear(3, 1, rng=1))
    whole = nn.Sequential(nn.Conv2d(2, 3, 3, rng=0), nn.BatchNorm2d(3), nn.GlobalAvgPool2d(), nn.Linear(3, 1, rng=1))
    rng = np.random.default_rng(8)
    x = rng.standard_normal((12, 2, 6, 6)).astype(np.float32)
    y = rng.standard_normal((12, 1)).astype(np.float32)
    cd.train_step(client, net, nn.MSELoss(), optim.SGD(net.parameters(), lr=0.0), [x[:5], x[5:]], [y[:5], y[5:]])
    whole(x)
    np.testing.assert_allclose(net[1].buffers["running_mean"], whole[1].buffers["running_mean"], rtol=1e-6, atol=1e-7)
    assert int(net[1].buffers["num_batches_tracked"]) == 1


# -- bad arguments --------------------------------------------------------------------------


def test_bad_arguments_have_clear_errors(client):
    weight = np.ones((2, 3, 3, 3), np.float32)
    image = np.zeros((1, 3, 32, 32), np.float32)
    with pytest.raises(TypeError, match=r"x must be a dask.array.Array, got ndarray.*from_array"):
        cd.conv2d(image, weight)
    with pytest.raises(TypeError, match=r"x must be a dask.array.Array"):
        cd.predict(classifier(), image)
    with pytest.raises(ValueError, match=r"chunked along its channel axis \(axis 1, chunks \(1, 2\)\)"):
        cd.conv2d(da.from_array(image, chunks=(1, 1, 16, 16)).rechunk({1: (1, 2)}), weight)
    with pytest.raises(ValueError, match=r"chunked along axis 1 .*rechunk"):
        cd.predict(classifier(), da.from_array(image, chunks=(1, 1, 32, 32)))
    with pytest.raises(ValueError, match=r"chunked along axis 2 .*predict_tiled"):
        cd.predict(classifier(), da.from_array(image, chunks=(1, 3, 16, 32)))
    with pytest.raises(ValueError, match=r"boundaries of x along height \(\[15\]\) must be multiples of the "
                                         r"convolution's total stride 2"):
        cd.conv2d(da.from_array(image, chunks=(1, 3, (15, 17), 16)), weight, stride=2, padding=1)
    net = nn.Sequential(nn.Conv2d(3, 3, 3, stride=2), nn.MaxPool2d(2)).eval()
    with pytest.raises(ValueError, match=r"along width \(\[10, 20, 30\]\) must be multiples of the net's total "
                                         r"stride 4 \(got \[10, 30\]\)"):
        cd.predict_tiled(net, da.from_array(image, chunks=(1, 3, 16, 10)))
    with pytest.raises(ValueError, match=r"padding='same_lower' needs stride 1 here, got stride=\(2, 2\)"):
        cd.conv2d(da.from_array(image, chunks=(1, 3, 16, 16)), weight, stride=2, padding="same_lower")
    with pytest.raises(ValueError, match=r"\(\(top, bottom\), \(left, right\)\)"):
        cd.conv2d(da.from_array(image), weight, padding=(1, 0, 1, 0))
    net = nn.Sequential(nn.Conv2d(3, 3, 3, stride=2, padding="same")).eval()
    with pytest.raises(ValueError, match=r"padding='same' at stride \(2, 2\) depends on the input size"):
        cd.predict_tiled(net, da.from_array(image, chunks=(1, 3, 16, 16)))
    with pytest.raises(TypeError, match=r"weight has dtype float64 but x float32"):
        cd.conv2d(da.from_array(image), weight.astype(np.float64))
    with pytest.raises(ValueError, match=r"x has 3 channels but weight \(2, 2, 3, 3\) with groups=1 expects 2"):
        cd.conv2d(da.from_array(image), np.ones((2, 2, 3, 3), np.float32))
    with pytest.raises(TypeError, match=r"x must hold float32 or float64, got dtype int64"):
        cd.conv2d(da.zeros((1, 3, 8, 8), dtype=np.int64), weight)
    with pytest.raises(TypeError, match=r"fully convolutional nets.*got Linear"):
        cd.predict_tiled(nn.Sequential(nn.Conv2d(3, 3, 3), nn.Linear(3, 3)), da.from_array(image))
    with pytest.raises(ValueError, match=r"zero padding.*padding_mode='reflect'"):
        cd.predict_tiled(nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect"), da.from_array(image))
    with pytest.raises(ValueError, match=r"the convolution has no output along height"):
        cd.conv2d(da.zeros((1, 3, 2, 8), dtype=np.float32), weight)
    with pytest.raises(TypeError, match=r"model must be a convx.nn Module or a callable, got int"):
        cd.predict(3, da.from_array(image))
    with pytest.raises(ValueError, match=r"meta must be the output for one image, shape \(1, ...\), got shape \(2, 3\)"):
        cd.predict(classifier(), da.from_array(image), meta=np.zeros((2, 3)))
    model = training_net()
    opt = optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match=r"client must be a distributed.Client, got str"):
        cd.train_step("tcp://127.0.0.1:8786", model, nn.MSELoss(), opt, [image], [image])
    with pytest.raises(ValueError, match=r"same length, got 2 and 1"):
        cd.train_step(client, model, nn.MSELoss(), opt, [image, image], [image])
    with pytest.raises(ValueError, match=r"reduction 'mean' or 'sum'"):
        cd.train_step(client, model, nn.CrossEntropyLoss(reduction="none"), opt, [image], [image])


# -- start methods ---------------------------------------------------------------------------

START_METHODS_SCRIPT = textwrap.dedent(
    """
    import json, sys, warnings
    import numpy as np
    import dask, dask.array as da, distributed
    import convx, convx.dask as cd
    from convx import nn

    def counts(batch):
        import convx as cx
        return np.full((len(batch), 1), cx.get_num_threads(), dtype=np.int64)

    if __name__ == "__main__":
        warnings.simplefilter("ignore")
        convx.set_num_threads(2)
        model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, rng=0), nn.ReLU(), nn.GlobalAvgPool2d()).eval()
        images = np.random.default_rng(0).standard_normal((8, 3, 64, 64)).astype(np.float32)
        with nn.no_grad():
            expected = np.concatenate([model(images[i:i + 4]) for i in (0, 4)])  # teams of 2 in this parent
        report = {}
        for method in sys.argv[1:]:
            with dask.config.set({"distributed.worker.multiprocessing-method": method}):
                with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                                              dashboard_address="127.0.0.1:0") as cluster, distributed.Client(cluster):
                    x = da.from_array(images, chunks=(4, 3, 64, 64))
                    equal = bool(np.array_equal(cd.predict(model, x).compute(), expected))
                    threads = cd.predict(counts, x, meta=np.empty((1, 1), np.int64)).compute()
                    report[method] = [equal, sorted(set(threads.ravel().tolist()))]
        print(json.dumps(report))
    """
)


def test_predict_on_workers_started_by_fork_forkserver_and_spawn(tmp_path):
    import multiprocessing

    methods = [m for m in ("fork", "forkserver", "spawn") if m in multiprocessing.get_all_start_methods()]
    script = tmp_path / "start_methods.py"
    script.write_text(START_METHODS_SCRIPT)
    done = subprocess.run([sys.executable, str(script), *methods], capture_output=True, text=True,
                          timeout=3 * CLUSTER_TIMEOUT, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    import json

    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {method: [True, [1]] for method in methods}


# -- documentation ------------------------------------------------------------------------------


def test_docstring_examples():
    result = doctest.testmod(cd, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_tutorial_runs(tmp_path, monkeypatch):
    """The code blocks of docs/dask.rst, in order, as one script (its own LocalCluster)."""
    page = (ROOT / "docs" / "dask.rst").read_text(encoding="utf-8")
    blocks = re.findall(r"\.\. code-block:: python\n\n((?:(?:   .*)?\n)+)", page)
    assert len(blocks) >= 4
    code = "\n".join(textwrap.dedent(block) for block in blocks)
    script = tmp_path / "tutorial.py"
    script.write_text("def main():\n" + textwrap.indent(code, "    ") + "\n\nif __name__ == '__main__':\n    main()\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=3 * CLUSTER_TIMEOUT, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]


def test_tiled_pooling_with_same_padding_is_refused():
    net = nn.Sequential(nn.MaxPool2d(3, 2, "same")).eval()
    image = np.zeros((1, 1, 24, 24), np.float32)
    with pytest.raises(ValueError, match=r"depends on the whole input's size; give the padding per side"):
        cd.predict_tiled(net, da.from_array(image, chunks=(1, 1, 12, 12)))
