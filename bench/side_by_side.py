"""fcn_graph against the peer implementations in ../shared/bench-peers, in ONE
process, call by call: each round runs every contender once, so that a busy
spell on this shared machine slows all of them alike.

    # TensorFlow: segmenter.Segmenter vs the peers' Keras model as tf.function and XLA
    python bench/side_by_side.py tf --cases 224x1,512x1,224x8
    # ONNX Runtime: our exported model vs the peers' exported model (same session options)
    python bench/side_by_side.py onnxruntime --peer-onnx /tmp/peer_bench_work/fcn8s_vgg19.onnx
    # PyTorch: run with the peers' venv (torch + onnxruntime, no TensorFlow needed)
    /tmp/peerenv/bin/python bench/side_by_side.py torch --onnx /tmp/fcn_side/model.onnx
    # other runtimes on our exported files: OpenVINO f32 / bf16 and LiteRT against our
    # onnxruntime (the default engine), onnxruntime-int8 and tf-bf16 engines
    python bench/side_by_side.py runtimes --work /tmp/fcn_suite_work

`tf` and `onnxruntime` write random full-size weights (and the ONNX model, with
external data) to --work once; `torch` needs that ONNX file. `runtimes` reads
a work folder of bench/suite.py (`--work`): its weights, `weights.onnx`,
`weights.int8.onnx` and `weights.tflite`, each contender that has its file. The peers' ONNX
file comes from `peer_onnxrt.py --export DIR` (see bench-peers/README.md).
Each contender returns the label map (argmax) in host memory. Prints the
median / minimum ms per call of each contender for each case.
"""

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PEERS_DIR = os.path.join(HERE, "..", "..", "shared", "bench-peers")
sys.path.insert(0, os.path.join(HERE, ".."))  # bench and fcn_graph without installing them

from bench.worker import case_images  # noqa: E402
from fcn_graph.core.errors import run_cli  # noqa: E402
from fcn_graph.core.ranges import REPEATS_RANGE  # noqa: E402

THREADS = 2
MAX_CASE_SIZE, MAX_CASE_BATCH = 8192, 1024     # --cases SIZExBATCH


def ours_weights(work):
    """Checkpoint prefix and ONNX path of random full-size weights in `work`."""
    prefix, onnx_path = os.path.join(work, "weights"), os.path.join(work, "model.onnx")
    if not os.path.exists(prefix + ".index"):
        from bench.worker import make_weights
        make_weights(prefix, num_classes=21, width_multiplier=1.0, fc_width=4096)
    if not os.path.exists(onnx_path):
        from fcn_graph.engines.onnx_engine import build_onnx_model, save_model
        save_model(build_onnx_model(prefix), onnx_path, external_data=True)
    return prefix, onnx_path


def peer_onnx_session(path):
    """The peers' ONNX model under our engine's session options."""
    from fcn_graph.engines.onnx_engine import load_session, session_options
    return load_session(path, session_options(THREADS), ["CPUExecutionProvider"])


def ours_onnx(onnx_path, batch, size):
    """A call of our ONNX Runtime engine on a `batch` of `size` x `size` images."""
    from fcn_graph.engines.onnx_engine import OnnxSegmenter
    segmenter, images = OnnxSegmenter(onnx_path, threads=THREADS), case_images(batch, size, size)
    return lambda: segmenter.run(images)[0]


def contenders_tf(args, batch, size, prefix, _onnx):
    import fcn_spec
    import peer_tf
    import tensorflow as tf
    if not hasattr(args, "segmenter"):
        from fcn_graph.engines.segmenter import Segmenter
        args.segmenter = Segmenter(prefix, threads=THREADS)
    _, pred_model = peer_tf.build(batch, size, size)
    x = tf.constant(fcn_spec.make_input(batch, size, size, layout="NHWC"))
    images = case_images(batch, size, size)
    found = {"fcn_graph tf": lambda: args.segmenter.run(images)[0]}
    for name, jit in (("peer tf-function", False), ("peer tf-xla", True)):
        function = tf.function(lambda t: pred_model(t, training=False), jit_compile=jit)
        found[name] = (lambda f: lambda: f(x).numpy())(function)
    return found


def contenders_onnxruntime(args, batch, size, _prefix, onnx_path):
    import fcn_spec
    peer = peer_onnx_session(args.peer_onnx)
    x = fcn_spec.make_input(batch, size, size, layout="NCHW")
    return {"fcn_graph onnxruntime": ours_onnx(onnx_path, batch, size),
            "peer onnxruntime": lambda: peer.run(["pred"], {"x": x})[0]}


def contenders_torch(args, batch, size, _prefix, onnx_path):
    import fcn_spec
    import torch
    import torch._inductor.config as inductor_config
    import torch_model
    torch.set_num_threads(THREADS)
    inductor_config.freezing = True  # the peers' fastest variant: torch-compile-freeze
    model = torch.compile(torch_model.build(seed=0).eval())
    x = torch.from_numpy(fcn_spec.make_input(batch, size, size, layout="NCHW"))

    def peer():
        with torch.inference_mode():
            return model(x).argmax(1).numpy()
    return {"fcn_graph onnxruntime": ours_onnx(onnx_path, batch, size),
            "peer torch-compile-freeze": peer}


def contenders_runtimes(args, batch, size, _prefix, _onnx):
    """Our engines (onnxruntime float32 and int8, tf in bfloat16 where the CPU
    has the units) against OpenVINO f32 and bf16 and LiteRT on the files of
    the suite's work folder `args.work`, each with THREADS threads."""
    from bench.worker import onnx_path, tflite_path
    from fcn_graph.engines.onnx_engine import OnnxSegmenter
    from fcn_graph.engines.openvino_engine import OpenVinoSegmenter
    from fcn_graph.host import cpuinfo
    prefix, images = os.path.join(args.work, "weights"), case_images(batch, size, size)
    bf16 = cpuinfo.has_bf16_units(cpuinfo.cpu_features(cpuinfo.read_cpuinfo()))
    made = {"fcn_graph onnxruntime": lambda: OnnxSegmenter(onnx_path(prefix), threads=THREADS),
            "openvino f32": lambda: OpenVinoSegmenter(onnx_path(prefix), threads=THREADS)}
    if os.path.exists(onnx_path(prefix, "int8")):
        made["fcn_graph onnxruntime-int8"] = lambda: OnnxSegmenter(onnx_path(prefix, "int8"),
                                                                   threads=THREADS)
    if bf16:
        from fcn_graph.engines.segmenter import Segmenter
        made["fcn_graph tf-bf16"] = lambda: Segmenter(prefix, threads=THREADS,
                                                      precision="bfloat16")
        made["openvino bf16"] = lambda: OpenVinoSegmenter(onnx_path(prefix), threads=THREADS,
                                                          precision="bfloat16")
    if os.path.exists(tflite_path(prefix)):
        from fcn_graph.engines.litert import LiteRTSegmenter
        made["litert"] = lambda: LiteRTSegmenter(tflite_path(prefix), threads=THREADS)
    found = {}
    for name, make in made.items():
        segmenter = make()
        found[name] = (lambda s: lambda: s.run(images)[0])(segmenter)
    return found


def interleave(calls, rounds, warmup=3):
    for call in calls.values():
        for _ in range(warmup):
            call()
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return times



def cases_and_rounds(parser, args):
    """`--cases` as [(size, batch), ...], after checking it and `--rounds`
    (a parser error otherwise)."""
    cases = []
    for case in args.cases.split(","):
        size, _, batch = case.partition("x")
        if not (size.isdigit() and batch.isdigit() and len(size + batch) < 12
                and 0 < int(size) <= MAX_CASE_SIZE and 0 < int(batch) <= MAX_CASE_BATCH):
            parser.error(f"--cases: expected SIZExBATCH like 224x1 (SIZE 1..{MAX_CASE_SIZE}, "
                         f"BATCH 1..{MAX_CASE_BATCH}), found {case[:40]!r}")
        cases.append((int(size), int(batch)))
    if args.rounds < 1:
        parser.error(f"--rounds: expected a positive integer, found {args.rounds}")
    return cases

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("engine", choices=("tf", "onnxruntime", "torch", "runtimes"))
    parser.add_argument("--cases", default="224x1,512x1,224x8",
                        help="SIZExBATCH, comma-separated (square images)")
    parser.add_argument("--rounds", type=REPEATS_RANGE, default=7, help="timed calls of each contender")
    parser.add_argument("--work", default="/tmp/fcn_side", help="where our weights are written")
    parser.add_argument("--peer-onnx", default="/tmp/peer_bench_work/fcn8s_vgg19.onnx")
    parser.add_argument("--onnx", help="torch: our ONNX model (written by the other modes)")
    args = parser.parse_args(argv)
    cases = cases_and_rounds(parser, args)
    if args.engine == "runtimes":
        if not os.path.exists(os.path.join(args.work, "weights.onnx")):
            parser.error(f"--work {args.work}: no weights.onnx; expected a work folder of "
                         "bench/suite.py --work")
    elif not os.path.isfile(os.path.join(PEERS_DIR, "fcn_spec.py")):
        parser.error(f"{os.path.normpath(PEERS_DIR)}: the peers' benchmark (fcn_spec.py) is not there")
    sys.path.insert(0, PEERS_DIR)
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
    prefix, onnx_path = None, args.onnx
    if args.engine == "runtimes":
        from fcn_graph.host import choice
        choice.apply_onednn("inference", threads=THREADS)  # as infer does, before TensorFlow
    if args.engine in ("tf", "runtimes"):
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(THREADS)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    if args.engine == "runtimes":
        prefix = os.path.join(args.work, "weights")
    elif args.engine != "torch":
        os.makedirs(args.work, exist_ok=True)
        prefix, onnx_path = ours_weights(args.work)
    elif not onnx_path:
        parser.error("torch: --onnx (our model, written by the tf or onnxruntime mode) is required")
    from fcn_graph.host.memory import return_freed_memory
    return_freed_memory()
    build = {"tf": contenders_tf, "onnxruntime": contenders_onnxruntime,
             "torch": contenders_torch, "runtimes": contenders_runtimes}[args.engine]
    for size, batch in cases:
        times = interleave(build(args, batch, size, prefix, onnx_path), args.rounds)
        print(f"{size}x{size} batch {batch}: " + "; ".join(
            f"{name} {statistics.median(t) * 1e3:.0f} / {min(t) * 1e3:.0f} ms"
            for name, t in times.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="bench/side_by_side.py"))
