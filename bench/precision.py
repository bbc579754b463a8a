"""float32, bfloat16 and int8 side by side, in ONE process, call by call (each
round runs every contender once, so that a busy spell slows all alike):

    python bench/precision.py                      # random full-size VGG19 weights
    python bench/precision.py --cases 512x1 --rounds 5

Contenders, each returning the label map in host memory:
  tf float32           segmenter.Segmenter (oneDNN as TF_ENABLE_ONEDNN_OPTS says)
  tf bfloat16          the same with --precision bfloat16 (needs oneDNN and bf16 units)
  onnxruntime float32  onnx_engine.OnnxSegmenter on the float model (the reference peer)
  onnxruntime int8     the same on int8_model.quantize_model's int8 model

The weights are random (speed does not depend on them); the int8 model is
calibrated on --calibration (default: 8 generated 224x224 shapes images).
Prints the CPU model and its bf16/int8 flags, then per case the median and
minimum ms per call, and each contender's speed-up over onnxruntime float32.
A contender that cannot run here (bf16 without oneDNN or without the units)
is listed with the reason.
"""

import argparse
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))  # bench and fcn_graph without installing them

from bench.side_by_side import cases_and_rounds, interleave, ours_weights  # noqa: E402
from bench.worker import case_images, generated_calibration  # noqa: E402
from fcn_graph.core.errors import UserError, run_cli  # noqa: E402
from fcn_graph.core.ranges import REPEATS_RANGE  # noqa: E402
from fcn_graph.host import cpuinfo  # noqa: E402

THREADS = 2
REFERENCE = "onnxruntime float32"


def contenders(prefix, fp32_onnx, int8_onnx, batch, size):
    """name -> call (or the reason it cannot run) for one case."""
    from fcn_graph.engines.onnx_engine import OnnxSegmenter
    from fcn_graph.engines.segmenter import Segmenter
    images = case_images(batch, size, size)
    calls = {}
    for precision in ("float32", "bfloat16"):
        try:
            segmenter = Segmenter(prefix, threads=THREADS, precision=precision)
        except UserError as err:
            calls[f"tf {precision}"] = str(err)
            continue
        calls[f"tf {precision}"] = (lambda s: lambda: s.run(images)[0])(segmenter)
    for name, path in (("float32", fp32_onnx), ("int8", int8_onnx)):
        segmenter = OnnxSegmenter(path, threads=THREADS)
        calls[f"onnxruntime {name}"] = (lambda s: lambda: s.run(images)[0])(segmenter)
    return calls


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="224x1,512x1,224x8",
                        help="SIZExBATCH, comma-separated (square images)")
    parser.add_argument("--rounds", type=REPEATS_RANGE, default=7, help="timed calls of each contender")
    parser.add_argument("--work", default="/tmp/fcn_precision",
                        help="where the weights and the two ONNX models are written")
    parser.add_argument("--calibration", default=None, metavar="DIR",
                        help="images to calibrate int8 on (default: generated shapes images)")
    args = parser.parse_args(argv)
    cases = cases_and_rounds(parser, args)
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
    from fcn_graph.engines import int8_model
    from fcn_graph.host import session
    os.makedirs(args.work, exist_ok=True)
    prefix, fp32_onnx = ours_weights(args.work)
    int8_onnx = os.path.join(args.work, "model_int8.onnx")
    if not os.path.exists(int8_onnx):
        calibration = args.calibration or generated_calibration(
            os.path.join(args.work, "calibration"))
        int8_model.quantize_model(fp32_onnx, calibration, int8_onnx)
    features = cpuinfo.cpu_features()
    print(f"CPU: {cpuinfo.cpu_label()}; bf16 units: "
          f"{', '.join(f for f in cpuinfo.BF16_FLAGS if f in features) or 'none'}; int8 units: "
          f"{', '.join(f for f in cpuinfo.INT8_FLAGS if f in features) or 'none'}; "
          f"oneDNN {'on' if session.onednn_enabled() else 'off'}; {THREADS} threads")
    from fcn_graph.host.memory import return_freed_memory
    return_freed_memory()
    for size, batch in cases:
        calls = contenders(prefix, fp32_onnx, int8_onnx, batch, size)
        runnable = {name: call for name, call in calls.items() if callable(call)}
        times = interleave(runnable, args.rounds)
        medians = {name: statistics.median(t) for name, t in times.items()}
        print(f"{size}x{size} batch {batch} (median / min ms per call, speed-up over "
              f"{REFERENCE}):", flush=True)
        for name, call in calls.items():
            if not callable(call):
                print(f"  {name:20s} not run: {call}")
                continue
            print(f"  {name:20s} {medians[name] * 1e3:7.0f} / {min(times[name]) * 1e3:7.0f}"
                  f"  x{medians[REFERENCE] / medians[name]:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="bench/precision.py"))
