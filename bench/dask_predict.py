"""Batch-inference throughput of convx.dask.predict on a LocalCluster against one process.

    python bench/dask_predict.py [--images 4096] [--chunk 256] [--repeats 3] [--net vgg_bn]
    python bench/dask_predict.py --tiled 8192

Compares, for the CIFAR-size nets of ``convx.bench.nets``, evaluation-mode inference under
``nn.no_grad()`` of the same images in chunks of ``--chunk``:

- one process, convx on 2 threads, the chunks one after the other;
- ``convx.dask.predict`` on a LocalCluster of 2 worker processes x 1 thread (loopback), with the
  images (a) already on the workers (generated there and persisted: compute and scheduling only) and (b) in the
  client's memory (``from_array``: each chunk is also sent to a worker).

The three run in turn ``--repeats`` times (so that other load on the machine falls on each alike)
and the median and best of each are printed, with the load average before and after. Then the
peak resident memory of each worker for an input 4x its memory limit (``--memory-multiple``; generated on the workers and
reduced there, so nothing returns whole).

``--tiled SIZE`` instead runs :func:`convx.dask.predict_tiled` of a 3-layer fully convolutional
net over a SIZE x SIZE image from Zarr to Zarr in 1024 x 1024 tiles, with the workers' peak
memory, and compares it with the net on the whole image in memory.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def best_of(repeats: int, run) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--net", default="vgg_bn")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    parser.add_argument("--memory-multiple", type=float, default=4.0,
                        help="the memory measurement's input, in multiples of a worker's memory limit (default 4)")
    parser.add_argument("--tiled", type=int, default=0, metavar="SIZE",
                        help="only: tiled inference of a 3-layer fully convolutional net over a SIZE x SIZE "
                             "image in 1024 x 1024 tiles, written to Zarr, against the same net in memory")
    args = parser.parse_args()
    if args.tiled:
        tiled(args.tiled)
        return

    import dask.array as da
    from distributed import Client, LocalCluster

    import convx
    import convx.dask
    from convx import nn
    from convx.bench.nets.models import NETS, convx_model

    net = NETS[args.net]
    model = convx_model(net).eval()
    images = np.random.default_rng(0).standard_normal((args.images, *net.image_shape), dtype=np.float32)
    print(f"net {net.name}: {net.description}; {args.images} images in chunks of {args.chunk}")
    print(f"load average before: {os.getloadavg()}")

    convx.set_num_threads(2)

    def in_process() -> None:
        with nn.no_grad():
            for start in range(0, args.images, args.chunk):
                model(images[start:start + args.chunk])

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        from distributed import wait

        # Generated on the workers (root tasks spread over both), then kept there.
        on_workers = da.random.default_rng(0).standard_normal(
            images.shape, chunks=(args.chunk, *net.image_shape), dtype=np.float32).persist()
        wait(on_workers)
        held = sorted(len(keys) for keys in client.has_what().values())
        in_client = da.from_array(images, chunks=(args.chunk, *net.image_shape))
        runs = {
            "one process, 2 threads": in_process,
            "2 workers x 1 thread, data there": lambda: convx.dask.predict(model, on_workers).compute(),
            "2 workers x 1 thread, data sent": lambda: convx.dask.predict(model, in_client).compute(),
        }
        for run in runs.values():  # warm-up
            run()
        # Interleaved, so that the machine's other load falls on every variant alike.
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
        print(f"(chunks held per worker: {held})")
        reference = float(np.median(times["one process, 2 threads"]))
        for name, measured in times.items():
            median = float(np.median(measured))
            print(f"{name:34s} median {args.images / median:6.0f} images/s, best {args.images / min(measured):6.0f} "
                  f"({reference / median:.2f}x the one process, medians)")
    print(f"load average after: {os.getloadavg()}")

    if not args.no_memory:
        limit = 256 * 2**20
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address=None, memory_limit=limit) as cluster, Client(cluster) as client:
            image_bytes = int(np.prod(net.image_shape)) * 4
            count = int(args.memory_multiple * limit) // image_bytes
            big = da.random.default_rng(1).standard_normal((count, *net.image_shape), chunks=(args.chunk, *net.image_shape),
                                                          dtype=np.float32)
            baseline = client.run(lambda: __import__("psutil").Process().memory_info().rss)
            start = time.perf_counter()
            total = convx.dask.predict(model, big).sum().compute()
            elapsed = time.perf_counter() - start

            def peak() -> int:
                import resource
                return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

            peaks = client.run(peak)
            print(f"memory: {count} images ({count * image_bytes / 2**20:.0f} MiB, {args.memory_multiple:g}x the 256 MiB "
                  "limit of each "
                  f"worker) in {elapsed:.1f} s (sum {total:.3g}); worker RSS at start "
                  f"{[round(v / 2**20) for v in baseline.values()]} MiB, peak {[round(v / 2**20) for v in peaks.values()]} MiB")


def tiled(size: int) -> None:
    """The issue's tiled target: SIZE x SIZE float32 in 1k x 1k tiles to Zarr; equality with the
    whole image in memory and the workers' peak resident memory."""
    import tempfile

    import dask.array as da
    import zarr
    from distributed import Client, LocalCluster

    import convx
    import convx.dask
    from convx import nn

    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, rng=0), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=2, dilation=2, rng=1), nn.ReLU(),
        nn.Conv2d(8, 1, 1, rng=2),
    ).eval()
    print(f"tiled: {size} x {size} float32 image, 1024 x 1024 tiles; load average {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as scratch, LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
    ) as cluster, Client(cluster) as client:
        image = da.random.default_rng(0).standard_normal((1, 1, size, size), chunks=(1, 1, 1024, 1024),
                                                         dtype=np.float32)
        image.to_zarr(f"{scratch}/image.zarr")
        start = time.perf_counter()
        convx.dask.predict_tiled(net, da.from_zarr(f"{scratch}/image.zarr")).to_zarr(f"{scratch}/out.zarr")
        elapsed = time.perf_counter() - start

        def peak() -> int:
            import resource
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

        peaks = [round(v / 2**20) for v in client.run(peak).values()]
        print(f"tiled on 2 workers x 1 thread: {elapsed:.1f} s, {size * size / elapsed / 1e6:.2f} Mpixel/s; "
              f"worker peak RSS {peaks} MiB")
        whole = zarr.open_array(f"{scratch}/image.zarr")[...]
        convx.set_num_threads(2)
        start = time.perf_counter()
        with nn.no_grad():
            expected = net(whole)
        elapsed = time.perf_counter() - start
        got = zarr.open_array(f"{scratch}/out.zarr")[...]
        error = float(np.abs(got.astype(np.float64) - expected).max() / np.abs(expected).max())
        print(f"in memory, one process x 2 threads: {elapsed:.1f} s; tiled vs whole: bitwise "
              f"{bool(np.array_equal(got, expected))}, max relative difference {error:.2e}")


if __name__ == "__main__":
    main()
