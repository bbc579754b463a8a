"""Test-time augmentation: the cost of each variant against the plain run.

    python bench/tta_cost.py                                  # VOC-sized, both engines
    python bench/tta_cost.py --tta flip,scales=0.5,1,1.5 --engines tf --repeats 5

One image of --size (default 375x500, a VOC image) through a checkpoint of
random weights (the full-width VGG19, 21 classes; --width-multiplier for a
narrower one), per engine: the plain run, then `tta.TtaSegmenter` with --tta.
For each variant (scale, flip) the network's time on its copy; then the time
of the averaging (resizes, flips, softmax, sum: the total less the network
runs) and the total against the plain run. Each figure is the median of
--repeats runs after one warm-up run.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)


class _Timed:
    """A segmenter that records the time of each run."""

    def __init__(self, segmenter):
        self.segmenter, self.seconds = segmenter, []

    def run(self, batch, *, scores=False):
        start = time.perf_counter()
        out = self.segmenter.run(batch, scores=scores)
        self.seconds.append(time.perf_counter() - start)
        return out

    def close(self):
        self.segmenter.close()


def _image(height, width, seed=0):
    """A blocky random image: 16x16-pixel blocks of random colour, uint8 RGB."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (-(-height // 16), -(-width // 16), 3), dtype=np.uint8)
    return np.repeat(np.repeat(small, 16, axis=0), 16, axis=1)[:height, :width]


def measure(prefix, engine, tta, batch, repeats, threads):
    """{"plain": s, "variants": [(scale, flipped, s)], "averaging": s, "total": s}, medians."""
    from fcn_graph.engines.segmenter import make_segmenter
    from fcn_graph.engines.tta import TtaSegmenter
    timed = _Timed(make_segmenter(prefix, engine=engine, threads=threads))
    augmented = TtaSegmenter(timed, tta)
    plain, per_variant, averaging, total = [], [], [], []
    try:
        for attempt in range(repeats + 1):
            timed.seconds.clear()
            start = time.perf_counter()
            timed.run(batch, scores=True)
            plain.append(time.perf_counter() - start)
            timed.seconds.clear()
            start = time.perf_counter()
            augmented.run(batch, scores=True)
            seconds = time.perf_counter() - start
            if attempt == 0:
                plain.clear()
                continue
            per_variant.append(list(timed.seconds))
            total.append(seconds)
            averaging.append(seconds - sum(timed.seconds))
    finally:
        timed.close()
    columns = list(zip(*per_variant))
    return {"plain": statistics.median(plain),
            "variants": [(scale, flipped, statistics.median(column))
                         for (scale, flipped), column in zip(tta.variants, columns)],
            "averaging": statistics.median(averaging), "total": statistics.median(total)}


def _cpu():
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
        return next((line.split(":", 1)[1].strip() for line in handle
                     if line.startswith("model name")), "?")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tta", default="flip,scales=0.75,1,1.25",
                        help="the --tta value (default flip,scales=0.75,1,1.25)")
    parser.add_argument("--engines", default="tf,onnxruntime",
                        help="comma-separated engines (default tf,onnxruntime)")
    parser.add_argument("--size", default="375x500", help="HEIGHTxWIDTH (default 375x500)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="threads (default: all)")
    parser.add_argument("--width-multiplier", type=float, default=1.0,
                        help="VGG width multiplier of the random weights (default 1.0)")
    args = parser.parse_args(argv)
    from fcn_graph.engines.tta import parse_tta
    try:
        tta = parse_tta(args.tta)
        height, width = (int(v) for v in args.size.lower().split("x"))
    except ValueError as err:
        parser.error(str(err))
    if tta is None or args.repeats < 1 or height < 1 or width < 1:
        parser.error("expected a --tta other than off, --repeats >= 1 and a positive --size")
    from bench.worker import make_weights
    print(f"CPU: {_cpu()}, {os.cpu_count()} cores; image {height}x{width}; --tta {tta.text}; "
          f"median of {args.repeats}")
    batch = _image(height, width)[None]
    with tempfile.TemporaryDirectory(prefix="fcn_tta_") as work:
        prefix = os.path.join(work, "random")
        make_weights(prefix, num_classes=21, width_multiplier=args.width_multiplier,
                     fc_width=4096 if args.width_multiplier == 1.0 else 64)
        for engine in args.engines.split(","):
            result = measure(prefix, engine.strip(), tta, batch, args.repeats, args.threads)
            plain = result["plain"]
            print(f"\n{engine}: plain run {plain * 1000:.0f} ms")
            for scale, flipped, seconds in result["variants"]:
                name = f"scale {scale:g}{', flipped' if flipped else ''}"
                print(f"  {name:<20} {seconds * 1000:7.0f} ms  {seconds / plain:5.2f} x plain")
            print(f"  {'averaging':<20} {result['averaging'] * 1000:7.0f} ms  "
                  f"{result['averaging'] / plain:5.2f} x plain")
            print(f"  {'total':<20} {result['total'] * 1000:7.0f} ms  "
                  f"{result['total'] / plain:5.2f} x plain")
    return 0


if __name__ == "__main__":
    sys.exit(main())
