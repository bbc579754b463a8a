"""fcn_graph against the peer implementations in ../shared/bench-peers, in ONE
process, call by call: each round runs every contender once, so that a busy
spell on this shared machine slows all of them alike.

    # TensorFlow: infer.Segmenter vs the peers' Keras model as tf.function and XLA
    python bench/side_by_side.py tf --cases 224x1,512x1,224x8
    # ONNX Runtime: our exported model vs the peers' exported model (same session options)
    python bench/side_by_side.py onnxruntime --peer-onnx /tmp/peer_bench_work/fcn8s_vgg19.onnx
    # PyTorch: run with the peers' venv (torch + onnxruntime, no TensorFlow needed)
    /tmp/peerenv/bin/python bench/side_by_side.py torch --onnx /tmp/fcn_side/model.onnx

`tf` and `onnxruntime` write random full-size weights (and the ONNX model, with
external data) to --work once; `torch` needs that ONNX file. The peers' ONNX
file comes from `peer_onnxrt.py --export DIR` (see bench-peers/README.md).
Each contender returns the label map (argmax) in host memory. Prints the
median / minimum ms per call of each contender for each case.
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
PEERS_DIR = os.path.join(HERE, "..", "..", "shared", "bench-peers")
THREADS = 2


def ours_weights(work):
    """Checkpoint prefix and ONNX path of random full-size weights in `work`."""
    prefix, onnx_path = os.path.join(work, "weights"), os.path.join(work, "model.onnx")
    if not os.path.exists(prefix + ".index"):
        from fcn_graph.bench import make_weights
        make_weights(prefix, num_classes=21, width_multiplier=1.0, fc_width=4096)
    if not os.path.exists(onnx_path):
        from fcn_graph.onnx_engine import build_onnx_model, save_model
        save_model(build_onnx_model(prefix), onnx_path, external_data=True)
    return prefix, onnx_path


def ort_session(path):
    import onnxruntime as ort

    from fcn_graph.onnx_engine import session_options
    return ort.InferenceSession(path, session_options(THREADS),
                                providers=["CPUExecutionProvider"])


def contenders_tf(args, batch, size, prefix, _onnx):
    import fcn_spec
    import peer_tf
    import tensorflow as tf
    if not hasattr(args, "segmenter"):
        from fcn_graph.infer import Segmenter
        args.segmenter = Segmenter(prefix, threads=THREADS)
    _, pred_model = peer_tf.build(batch, size, size)
    x = tf.constant(fcn_spec.make_input(batch, size, size, layout="NHWC"))
    images = _images(batch, size)
    found = {"fcn_graph tf": lambda: args.segmenter.run(images)[0]}
    for name, jit in (("peer tf-function", False), ("peer tf-xla", True)):
        function = tf.function(lambda t: pred_model(t, training=False), jit_compile=jit)
        found[name] = (lambda f: lambda: f(x).numpy())(function)
    return found


def contenders_onnxruntime(args, batch, size, _prefix, onnx_path):
    import fcn_spec
    ours, peer = ort_session(onnx_path), ort_session(args.peer_onnx)
    images = _images(batch, size)
    x = fcn_spec.make_input(batch, size, size, layout="NCHW")
    return {"fcn_graph onnxruntime": lambda: ours.run(["labels"], {"images": images})[0],
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
    ours = ort_session(onnx_path)
    images = _images(batch, size)

    def peer():
        with torch.inference_mode():
            return model(x).argmax(1).numpy()
    return {"fcn_graph onnxruntime": lambda: ours.run(["labels"], {"images": images})[0],
            "peer torch-compile-freeze": peer}


def _images(batch, size):
    return np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("engine", choices=("tf", "onnxruntime", "torch"))
    parser.add_argument("--cases", default="224x1,512x1,224x8",
                        help="SIZExBATCH, comma-separated (square images)")
    parser.add_argument("--rounds", type=int, default=7, help="timed calls of each contender")
    parser.add_argument("--work", default="/tmp/fcn_side", help="where our weights are written")
    parser.add_argument("--peer-onnx", default="/tmp/peer_bench_work/fcn8s_vgg19.onnx")
    parser.add_argument("--onnx", help="torch: our ONNX model (written by the other modes)")
    args = parser.parse_args(argv)
    sys.path[:0] = [os.path.join(HERE, ".."), PEERS_DIR]  # fcn_graph without installing it
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
    prefix, onnx_path = None, args.onnx
    if args.engine == "tf":
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(THREADS)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    if args.engine != "torch":
        os.makedirs(args.work, exist_ok=True)
        prefix, onnx_path = ours_weights(args.work)
    elif not onnx_path:
        parser.error("torch: --onnx (our model, written by the tf or onnxruntime mode) is required")
    from fcn_graph.memory import return_freed_memory
    return_freed_memory()
    build = {"tf": contenders_tf, "onnxruntime": contenders_onnxruntime,
             "torch": contenders_torch}[args.engine]
    for case in args.cases.split(","):
        size, batch = (int(v) for v in case.split("x"))
        times = interleave(build(args, batch, size, prefix, onnx_path), args.rounds)
        print(f"{size}x{size} batch {batch}: " + "; ".join(
            f"{name} {statistics.median(t) * 1e3:.0f} / {min(t) * 1e3:.0f} ms"
            for name, t in times.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
