"""Tiled inference: peak memory, time and agreement with whole-image inference.

    python bench/tiled_memory.py                      # all three measurements
    python bench/tiled_memory.py --only large --tile 1024 --max-tiles 4
    python bench/tiled_memory.py --only agreement,tiny

- large: one 6000x4000 image through the full-width VGG19 (random weights, 21
  classes), tiled (`--tile`, default auto under `--memory-budget`), labels
  only, in its own process: the process's peak RSS (VmHWM) and the time.
- agreement: the same weights, 1024x768, whole image against tiled
  (`--agreement-tile`, default 864):
  labels equal, and the largest logit difference.
- tiny: the tiny-width model of the tests at several sizes, tile 608 and 640.

Weights are written once to a temporary checkpoint (bench/worker.make_weights).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from fcn_graph.core.ranges import MEMORY_BUDGET_RANGE, SEED_RANGE, Range

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _peak_mib():
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def _image(height, width, seed=0):
    """A blocky random image: 16x16-pixel blocks of random colour, uint8 RGB."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (-(-height // 16), -(-width // 16), 3), dtype=np.uint8)
    return np.repeat(np.repeat(small, 16, axis=0), 16, axis=1)[:height, :width]


class _Enough(Exception):
    """Raised by `_Timed` after its `max_tiles`."""


class _Timed:
    """A segmenter that reports each tile's time on stderr, and stops the run
    after `max_tiles` tiles (None: never)."""

    def __init__(self, segmenter, max_tiles=None):
        self.segmenter, self.count, self.started = segmenter, 0, time.perf_counter()
        self.max_tiles, self.seconds = max_tiles, []

    def run(self, batch, *, scores=False):
        if self.max_tiles is not None and self.count == self.max_tiles:
            raise _Enough
        start = time.perf_counter()
        out = self.segmenter.run(batch, scores=scores)
        self.seconds.append(time.perf_counter() - start)
        self.count += 1
        print(f"  tile {self.count} {batch.shape[1]}x{batch.shape[2]}: "
              f"{time.perf_counter() - start:.1f} s (total {time.perf_counter() - self.started:.0f} s)",
              file=sys.stderr, flush=True)
        return out

    def close(self):
        self.segmenter.close()


def worker(args):
    """One measurement in this process; prints a JSON line."""
    from fcn_graph.engines import tiling
    from fcn_graph.engines.segmenter import make_segmenter
    from fcn_graph.host.memory import return_freed_memory
    from fcn_graph.weights import checkpoint
    return_freed_memory()
    spec = checkpoint.model_spec_from_checkpoint(args.prefix)
    image = _image(args.height, args.width, seed=args.seed)[None]
    tile = tiling.parse_tile(args.tile)
    segmenter = make_segmenter(args.prefix, engine=args.engine)
    load_peak = _peak_mib()
    timed = _Timed(segmenter, args.max_tiles)
    tiled = tiling.TiledSegmenter(timed, spec, tile=tile,
                                  budget_bytes=args.memory_budget * 2**30)
    tile_size = tiled.tile_size(1, args.height, args.width)
    planned = (len(tiling.plan_tiles(args.height, args.width, tile_size, tiled.field))
               if tile_size else 1)
    start = time.perf_counter()
    try:
        labels, logits = tiled.run(image, scores=args.scores)
        done = True
    except _Enough:
        labels = logits = None
        done = False
    seconds = time.perf_counter() - start
    record = {"height": args.height, "width": args.width, "tile": args.tile,
              "tile_size": tile_size, "tiles": planned, "tiles_run": timed.count,
              "complete": done, "seconds": round(seconds, 1),
              "seconds_per_tile": round(float(np.mean(timed.seconds)), 2),
              "load_peak_mib": round(load_peak), "peak_mib": round(_peak_mib())}
    if args.save and done:
        np.save(args.save + "_labels.npy", labels[0])
        if logits is not None:
            np.save(args.save + "_logits.npy", logits[0])
    tiled.close()
    print(json.dumps(record), flush=True)
    return 0


def _spawn(prefix, height, width, tile, *, budget=2.0, engine="tf", save=None, scores=False,
           max_tiles=None):
    command = [sys.executable, os.path.abspath(__file__), "--worker", "--prefix", prefix,
               "--height", str(height), "--width", str(width), "--tile", str(tile),
               "--memory-budget", str(budget), "--engine", engine]
    if max_tiles is not None:
        command += ["--max-tiles", str(max_tiles)]
    if save:
        command += ["--save", save]
    if scores:
        command.append("--scores")
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run(command, stdout=subprocess.PIPE, env=env, text=True)
    if done.returncode:
        raise SystemExit(f"worker failed ({done.returncode}): {' '.join(command)}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _weights(prefix, width_multiplier, fc_width):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    code = ("import sys; sys.path.insert(0, %r); from bench.worker import make_weights; "
            "make_weights(%r, num_classes=21, width_multiplier=%r, fc_width=%r)"
            % (ROOT, prefix, width_multiplier, fc_width))
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def _compare(work, name):
    whole = np.load(os.path.join(work, f"{name}_whole_labels.npy"))
    tiled = np.load(os.path.join(work, f"{name}_tiled_labels.npy"))
    whole_logits = np.load(os.path.join(work, f"{name}_whole_logits.npy"))
    tiled_logits = np.load(os.path.join(work, f"{name}_tiled_logits.npy"))
    diff = np.abs(whole_logits - tiled_logits).max() / np.abs(whole_logits).max()
    return float((whole == tiled).mean()), float(diff)


def measure_agreement(work, prefix, tile, *, engine="tf", height=768, width=1024, name="full"):
    """Whole-image and tiled (`tile`) inference of checkpoint `prefix` on one
    image, each in its own process: {"runs": [whole record, tiled record],
    "agreement": share of equal labels, "max_logit_difference": max |logit
    difference| / max |logit|}. SystemExit when a process fails."""
    runs = [_spawn(prefix, height, width, value, engine=engine, scores=True,
                   save=os.path.join(work, f"{name}_{kind}"))
            for kind, value in (("whole", "off"), ("tiled", tile))]
    agree, diff = _compare(work, name)
    return {"runs": runs, "agreement": agree, "max_logit_difference": diff}


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--height", type=Range(1, 65536, integer=True), default=4000, help=argparse.SUPPRESS)
    parser.add_argument("--width", type=Range(1, 65536, integer=True), default=6000, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=SEED_RANGE, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    parser.add_argument("--scores", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--only", default="large,agreement,tiny",
                        help="comma-separated: large, agreement, tiny (default all)")
    parser.add_argument("--tile", default="auto", help="--tile of the large image (default auto)")
    parser.add_argument("--memory-budget", type=MEMORY_BUDGET_RANGE, default=2.0,
                        help="--memory-budget in GB (default 2)")
    parser.add_argument("--engine", default="tf", help="tf or onnxruntime (default tf)")
    parser.add_argument("--max-tiles", type=Range(1, 10**6, integer=True), default=None,
                        help="large: stop after N tiles and extrapolate the time from their "
                             "mean (the peak is reached by the first tiles: every tile has "
                             "the same size, and the labels are allocated at the first)")
    parser.add_argument("--agreement-tile", default="864",
                        help="--tile of the 1024x768 agreement run (default 864, auto's "
                             "size under 2 GB)")
    return parser


def _large(full, args):
    """The 6000x4000 run: its tiles, time and peak memory, printed."""
    record = _spawn(full, 4000, 6000, args.tile, budget=args.memory_budget,
                    engine=args.engine, max_tiles=args.max_tiles)
    timing = (f"{record['seconds']} s" if record["complete"] else
              f"{record['tiles_run']} tiles run, {record['seconds_per_tile']} s each: "
              f"about {record['seconds_per_tile'] * record['tiles']:.0f} s in all")
    print(f"6000x4000, full VGG19, --tile {args.tile} (tiles of {record['tile_size']}, "
          f"--memory-budget {args.memory_budget:g}): {record['tiles']} tiles, "
          f"{timing}, peak RSS {record['peak_mib']} MiB "
          f"(after loading {record['load_peak_mib']} MiB)", flush=True)


def _agreement(work, full, args):
    """Tiled against whole at 1024x768, printed."""
    result = measure_agreement(work, full, args.agreement_tile, engine=args.engine)
    for tile, record in zip(("off", args.agreement_tile), result["runs"]):
        tiles = f"{record['tiles']} tiles" if record["tile_size"] else "whole"
        print(f"1024x768, full VGG19, --tile {tile}: {tiles}, "
              f"{record['seconds']} s, peak RSS {record['peak_mib']} MiB", flush=True)
    agree, diff = result["agreement"], result["max_logit_difference"]
    print(f"1024x768, full VGG19 (random weights): labels agree on {agree:.4%}, "
          f"max |logit difference| / max |logit| = {diff:.1e}", flush=True)


def _tiny(work, args):
    """Tiled against whole at three sizes of a narrow model, printed."""
    tiny = os.path.join(work, "tiny")
    _weights(tiny, 1 / 32, 64)
    for height, width, tile in ((768, 1024, 640), (1001, 777, 608), (1500, 2001, 640)):
        for kind, value in (("whole", "off"), ("tiled", str(tile))):
            record = _spawn(tiny, height, width, value, engine=args.engine, scores=True,
                            save=os.path.join(work, f"tiny_{kind}"))
            if kind == "tiled":
                tiles = record["tiles"]
        agree, diff = _compare(work, "tiny")
        print(f"{width}x{height}, VGG19 widths / 32, --tile {tile} ({tiles} tiles): "
              f"labels agree on {agree:.4%}, max |logit difference| / max |logit| = "
              f"{diff:.1e}", flush=True)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.worker:
        return worker(args)
    only = set(args.only.split(","))
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
        cpu = next((line.split(":", 1)[1].strip() for line in handle
                    if line.startswith("model name")), "?")
    print(f"CPU: {cpu}, {os.cpu_count()} cores; engine {args.engine}")
    with tempfile.TemporaryDirectory(prefix="fcn_tiled_") as work:
        full = os.path.join(work, "full")
        if only & {"large", "agreement"}:
            _weights(full, 1.0, 4096)
        if "large" in only:
            _large(full, args)
        if "agreement" in only:
            _agreement(work, full, args)
        if "tiny" in only:
            _tiny(work, args)
    return 0

if __name__ == "__main__":
    sys.exit(main())
