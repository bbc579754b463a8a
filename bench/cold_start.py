"""Cold start and folder throughput of `python -m fcn_graph.infer`.

    python bench/cold_start.py                         # full VGG19 width, 100 images
    python bench/cold_start.py --images 20 --engines onnxruntime

Writes random full-size weights (as the benchmark does, `bench.worker`), a
500x375 JPEG and a folder of such JPEGs into a temporary folder, with the
model cache there too (FCN_GRAPH_CACHE), then measures:

- cold start: wall time and peak RSS of one `python -m fcn_graph.infer
  photo.jpg` process, for `--engine tf`, and for `--engine onnxruntime` with
  an empty cache (the checkpoint converted, then cached) and again (the
  cached model, no TensorFlow). Peak RSS from `/usr/bin/time -v` where it
  exists, else the child's own rusage. Files are in the page cache (a fresh
  process, not a fresh machine).
- folders: images per second of `infer FOLDER` in steady state (from the
  time each image's line is printed, the first one left out) against the
  network alone (`Segmenter.run` on one decoded image, warmed up, in a loop),
  for each engine: the folder split into `--rounds` folders, each run followed
  by the network alone; the rates are the medians.
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from fcn_graph.core.ranges import (
    FC_WIDTH_RANGE,
    NUM_CLASSES_RANGE,
    REPEATS_RANGE,
    WIDTH_MULTIPLIER_RANGE,
    Range,
)
from fcn_graph.host import cpuinfo

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIME = "/usr/bin/time"
GOAL_SECONDS, GOAL_GB, GOAL_RATIO = 2.5, 1.5, 0.95

NETWORK_ONLY = """
import sys, time
import numpy as np
from fcn_graph.data import image_files
from fcn_graph.engines.segmenter import make_segmenter
from fcn_graph.host import cpuinfo
prefix, engine, path, calls = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
segmenter = make_segmenter(prefix, engine=engine)
batch = image_files.read_image(path)[None]
segmenter.run(batch)
times = []
for _ in range(calls):
    start = time.perf_counter()
    segmenter.run(batch)
    times.append(time.perf_counter() - start)
print(sum(times) / len(times))
"""


def environment(work):
    env = dict(os.environ, FCN_GRAPH_CACHE=os.path.join(work, "cache"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [CHECKOUT, env.get("PYTHONPATH")]))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def measure(command, env):
    """(wall seconds, peak RSS in bytes, stdout lines with their arrival times)
    of one process; raises RuntimeError with its last lines when it fails."""
    use_time = os.access(TIME, os.X_OK)
    timed = [TIME, "-v"] + command if use_time else command
    start = time.perf_counter()
    proc = subprocess.Popen(timed, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    lines = []
    for line in proc.stdout:
        lines.append((time.perf_counter(), line))
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = "\n".join(line for line in err.splitlines()[-5:])
        raise RuntimeError(f"{' '.join(command[:4])} ... failed ({proc.returncode}):\n{tail}")
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", err)
    peak_kb = int(match.group(1)) if match else usage.ru_maxrss
    return wall, peak_kb * 1024, lines


def make_inputs(work, count, seed=0):
    """photo.jpg and FOLDER of `count` 500x375 JPEGs (smooth random scenes)."""
    import cv2
    import numpy as np
    rng = np.random.default_rng(seed)

    def scene():
        small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        image = cv2.resize(small, (500, 375), interpolation=cv2.INTER_CUBIC)
        noise = rng.integers(-12, 13, image.shape)
        return np.clip(image.astype(int) + noise, 0, 255).astype(np.uint8)

    photo = os.path.join(work, "photo.jpg")
    cv2.imwrite(photo, scene())
    folder = os.path.join(work, "folder")
    os.makedirs(folder)
    for index in range(count):
        cv2.imwrite(os.path.join(folder, f"img{index:03d}.jpg"), scene())
    return photo, folder


def make_weights(work, args, env):
    prefix = os.path.join(work, "weights")
    code = ("import sys; from bench.worker import make_weights; "
            "make_weights(sys.argv[1], num_classes=int(sys.argv[2]), "
            "width_multiplier=float(sys.argv[3]), fc_width=int(sys.argv[4]))")
    run = subprocess.run([sys.executable, "-c", code, prefix, str(args.num_classes),
                          str(args.width_multiplier), str(args.fc_width)], env=env,
                         cwd=CHECKOUT, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"could not write the weights:\n{run.stderr[-2000:]}")
    return prefix


def infer_command(inputs, prefix, out, engine):
    return [sys.executable, "-m", "fcn_graph.infer", inputs, "--checkpoint", prefix,
            "--output-dir", out, "--engine", engine]


def cold_starts(work, env, prefix, photo, engines):
    """One `infer photo.jpg` process per run: `tf`, and `onnxruntime` with an
    empty cache then again (cache hit); a dict per run with its name, engine,
    wall_s, peak_bytes and whether it meets the goal. RuntimeError when a run fails."""
    runs = []
    for engine in engines:
        if engine == "onnxruntime":
            runs += [("onnxruntime", "cache miss"), ("onnxruntime", "cache hit")]
        else:
            runs.append(("tf", ""))
    rows = []
    for index, (engine, what) in enumerate(runs):
        wall, peak, _ = measure(infer_command(photo, prefix, os.path.join(work, f"o{index}"),
                                              engine), env)
        rows.append({"name": f"{engine} {what}".strip(), "engine": engine, "wall_s": wall,
                     "peak_bytes": peak, "met": wall < GOAL_SECONDS and peak < GOAL_GB * 1e9})
    return rows


def split_folder(folder, parts):
    """`folder`'s files (sorted) linked (else copied) into `parts` sibling
    folders FOLDER_0 ... of near-equal counts; their paths."""
    names = sorted(os.listdir(folder))
    if len(names) < 3 * parts:
        raise ValueError(f"{folder}: {len(names)} images for {parts} rounds; expected at least "
                         "3 a round")
    paths = []
    for index in range(parts):
        part = f"{folder}_{index}"
        shutil.rmtree(part, ignore_errors=True)
        os.makedirs(part)
        for name in names[index * len(names) // parts:(index + 1) * len(names) // parts]:
            try:
                os.link(os.path.join(folder, name), os.path.join(part, name))
            except OSError:
                shutil.copyfile(os.path.join(folder, name), os.path.join(part, name))
        paths.append(part)
    return paths


def folder_rate(work, env, prefix, photo, folder, engine, network_calls, rounds=1):
    """Images per second of `infer FOLDER` in steady state against the network
    alone (`network_calls` calls on `photo`). With `rounds` > 1 the folder's
    images are split into that many folders, and each folder's run is
    followed by a network-only run: on a shared machine the speed drifts
    over minutes (single pairs 15 % apart either way), so the two are
    compared in short turns and by their medians. A dict of both rates (from
    the median periods), their ratio, each round's ratio, the median network
    ms per image inside infer and whether the ratio meets the goal.
    RuntimeError when a process fails."""
    folders = split_folder(folder, rounds) if rounds > 1 else [folder]
    folder_periods, network_periods, per_image = [], [], []
    for index, part in enumerate(folders):
        out = os.path.join(work, f"f_{engine}_{index}")
        _, _, lines = measure(infer_command(part, prefix, out, engine), env)
        shutil.rmtree(out, ignore_errors=True)
        stamps = [t for t, line in lines if " ms -> " in line]
        if len(stamps) < 3:
            raise RuntimeError(f"infer {part}: {len(stamps)} images done; expected at least 3")
        folder_periods.append((stamps[-1] - stamps[0]) / (len(stamps) - 1))
        per_image += [float(m.group(1)) for _, line in lines
                      for m in [re.search(r", (\d+) ms -> ", line)] if m]
        run = subprocess.run([sys.executable, "-c", NETWORK_ONLY, prefix, engine, photo,
                              str(network_calls)], env=env, capture_output=True, text=True,
                             cwd=CHECKOUT)
        if run.returncode != 0:
            tail = "\n".join(run.stderr.splitlines()[-5:])
            raise RuntimeError(f"the network-only run ({engine}) failed ({run.returncode}):\n"
                               f"{tail}")
        network_periods.append(float(run.stdout.strip().splitlines()[-1]))
    rate = 1.0 / statistics.median(folder_periods)
    network_rate = 1.0 / statistics.median(network_periods)
    ratio = rate / network_rate
    return {"engine": engine, "images": len(per_image), "rounds": rounds,
            "folder_rate": rate, "network_rate": network_rate, "ratio": ratio,
            "round_ratios": [n / f for f, n in zip(folder_periods, network_periods)],
            "network_ms_in_infer": statistics.median(per_image) if per_image else float("nan"),
            "met": ratio >= GOAL_RATIO}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python bench/cold_start.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", default="tf,onnxruntime",
                        help="engines to measure, comma-separated (default tf,onnxruntime)")
    parser.add_argument("--images", type=Range(0, 10**6, integer=True), default=100,
                        help="JPEGs in the folder (default 100; 0 skips the folder figures)")
    parser.add_argument("--network-calls", type=REPEATS_RANGE, default=10,
                        help="timed calls of the network alone (default 10)")
    parser.add_argument("--rounds", type=REPEATS_RANGE, default=10,
                        help="the folder split into this many runs, each followed by the "
                             "network alone; the medians count (default 10)")
    parser.add_argument("--width-multiplier", type=WIDTH_MULTIPLIER_RANGE, default=1.0,
                        help="VGG widths times this (default 1.0, the full VGG19)")
    parser.add_argument("--fc-width", type=FC_WIDTH_RANGE, default=4096, help="conv6/conv7 width")
    parser.add_argument("--num-classes", type=NUM_CLASSES_RANGE, default=21)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    if 0 < args.images < 3 * args.rounds:
        parser.error(f"--images {args.images} for --rounds {args.rounds}: expected at least 3 "
                     "images a round")
    engines = [e for e in args.engines.split(",") if e]
    unknown = sorted(set(engines) - {"tf", "onnxruntime"})
    if unknown:
        parser.error(f"--engines: expected tf and/or onnxruntime, found {', '.join(unknown)}")

    work = tempfile.mkdtemp(prefix="fcn_cold_")
    env = environment(work)
    try:
        print(f"CPU: {cpuinfo.cpu_label()}, {os.cpu_count()} cores; width x{args.width_multiplier}, "
              f"fc {args.fc_width}, {args.num_classes} classes", flush=True)
        prefix = make_weights(work, args, env)
        photo, folder = make_inputs(work, args.images)
        print("cold start, one 500x375 JPEG, `python -m fcn_graph.infer photo.jpg`"
              f" (peak RSS: {'/usr/bin/time -v' if os.access(TIME, os.X_OK) else 'rusage'}):",
              flush=True)
        for row in cold_starts(work, env, prefix, photo, engines):
            print(f"  {row['name']:24s} {row['wall_s']:6.2f} s  {row['peak_bytes'] / 1e9:5.2f} GB"
                  f"{'  (goal met)' if row['met'] else ''}", flush=True)
        if args.images:
            print(f"folder of {args.images} 500x375 JPEGs, steady state (first image left out), "
                  "against the network alone:", flush=True)
            for engine in engines:
                rate = folder_rate(work, env, prefix, photo, folder, engine, args.network_calls,
                                   args.rounds)
                print(f"  {engine:12s} folder {rate['folder_rate']:5.2f} img/s, network alone "
                      f"{rate['network_rate']:5.2f} img/s: {100 * rate['ratio']:5.1f} % "
                      f"(network {rate['network_ms_in_infer']:.0f} ms per image inside "
                      f"infer; rounds {', '.join(f'{100 * r:.0f} %' for r in rate['round_ratios'])})"
                      f"{'  (goal met)' if rate['met'] else ''}", flush=True)
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
