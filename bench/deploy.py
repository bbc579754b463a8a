"""Deployment paths on this CPU: video rate and LiteRT latency.

    python bench/deploy.py                        # both, full-width VGG19, 512x512
    python bench/deploy.py --only video --frames 20 --size 320x240
    python bench/deploy.py --only litert --rounds 7 --threads 2

- video: a video of `--frames` random frames of `--size` (MJPG, written
  here) segmented by `fcn_graph.engines.video.segment_video` (decode, network, blend
  and encode overlapped, labels written as PNGs too) with the ONNX Runtime
  engine, against the same engine's rate on one image of that size called
  in a loop (the network alone): frames/s, images/s and their ratio.
- litert: `export --format tflite` float32 and int8 (full integer, calibrated
  on 4 shapes images of the size) timed with `litert.LiteRTSegmenter` beside
  the ONNX Runtime engine (float32), batch 1 at `--size`: median ms, and
  the fraction of pixels whose labels agree with ONNX Runtime's.

Weights are random (bench/worker.make_weights), full VGG19 size, 21 classes,
written once to a temporary folder (`--work` keeps them). Prints medians.
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

from fcn_graph.host import cpuinfo  # noqa: E402


def median_ms(fn, rounds, warmup=1):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def write_video(path, frames, height, width, fps=25.0, seed=0):
    import cv2
    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(path, cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*"MJPG"), fps,
                             (width, height))
    for _ in range(frames):
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        writer.write(cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR))
    writer.release()


def bench_video(prefix, work, args):
    from fcn_graph.core.fileio import OutputFolder
    from fcn_graph.engines import video
    from fcn_graph.engines.onnx_engine import OnnxSegmenter

    height, width = args.size
    clip = os.path.join(work, "clip.avi")
    write_video(clip, args.frames, height, width)
    segmenter = OnnxSegmenter(prefix, threads=args.threads)
    image = np.random.default_rng(1).integers(0, 256, (1, height, width, 3), np.uint8)
    image_ms = median_ms(lambda: segmenter.run(image), args.rounds)
    rates = []
    for round_ in range(args.video_rounds):
        out = os.path.join(work, f"video_out_{round_}")
        folder = OutputFolder(out, "--output-dir")
        job = video.open_videos([clip], ["clip"], folder, save_labels=True)[0]
        start = time.perf_counter()
        with open(os.devnull, "w") as quiet:
            written = video.segment_video(job, segmenter, stream=quiet)
        rates.append(written / (time.perf_counter() - start))
        job.reader.close()
        folder.flush()
    segmenter.close()
    video_fps = statistics.median(rates)
    image_fps = 1000 / image_ms
    print(f"video {width}x{height}, {args.frames} frames, onnxruntime: {video_fps:.3f} frames/s "
          f"(median of {args.video_rounds}); the engine alone on one image: {image_fps:.3f} "
          f"images/s ({image_ms:.0f} ms); video/image {video_fps / image_fps:.1%}", flush=True)


def bench_litert(prefix, work, args):
    from fcn_graph.data.shapes import render_sample
    from fcn_graph.engines import exporters, litert
    from fcn_graph.engines.onnx_engine import OnnxSegmenter

    height, width = args.size
    calibration = os.path.join(work, "calibration")
    os.makedirs(calibration, exist_ok=True)
    import cv2
    rng = np.random.default_rng(7)
    for index in range(4):
        sample = render_sample(rng, max(height, width))[0][:height, :width]
        cv2.imwrite(os.path.join(calibration, f"c{index}.png"), sample[:, :, ::-1])
    image = np.random.default_rng(1).integers(0, 256, (1, height, width, 3), np.uint8)

    onnx = OnnxSegmenter(prefix, threads=args.threads)
    onnx_ms = median_ms(lambda: onnx.run(image), args.rounds)
    want = onnx.run(image)[0]
    onnx.close()
    print(f"onnxruntime float32 {width}x{height}: {onnx_ms:.0f} ms", flush=True)
    for name, kwargs in (("float32", {}), ("int8", {"quantize": "int8",
                                                    "calibration": calibration})):
        path = os.path.join(work, f"model_{name}.tflite")
        if not os.path.exists(path):
            start = time.perf_counter()
            exporters.export_tflite(prefix, path, verify=False, **kwargs)
            print(f"  (converted {name} in {time.perf_counter() - start:.0f} s, "
                  f"{os.path.getsize(path) / 2**20:.0f} MiB)", flush=True)
        segmenter = litert.LiteRTSegmenter(path, threads=args.threads)
        ms = median_ms(lambda run=segmenter.run: run(image), args.rounds)
        agree = float(np.mean(segmenter.run(image)[0] == want))
        segmenter.close()
        print(f"litert {name} {width}x{height}: {ms:.0f} ms ({onnx_ms / ms:.2f}x onnxruntime "
              f"float32), labels agree with onnxruntime on {agree:.2%}", flush=True)


def parse_size(text):
    width, height = (int(v) for v in text.lower().split("x"))
    return height, width


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("video", "litert"), default=None)
    parser.add_argument("--size", type=parse_size, default=(512, 512), help="WxH (512x512)")
    parser.add_argument("--frames", type=int, default=12, help="video frames (12)")
    parser.add_argument("--video-rounds", type=int, default=3, help="video runs (3)")
    parser.add_argument("--rounds", type=int, default=5, help="timed calls per case (5)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--width-multiplier", type=float, default=1.0)
    parser.add_argument("--fc-width", type=int, default=4096)
    parser.add_argument("--work", default=None, help="keep the weights and models here")
    args = parser.parse_args(argv)
    from fcn_graph.host import tflog
    tflog.load_tensorflow()
    import tensorflow as tf
    tf.get_logger().setLevel("ERROR")
    from bench.worker import make_weights

    print(f"CPU: {cpuinfo.cpu_label()}, {os.cpu_count()} logical CPUs, threads {args.threads}",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="fcn_deploy_") as scratch:
        work = args.work or scratch
        os.makedirs(work, exist_ok=True)
        prefix = os.path.join(work, "weights")
        if not os.path.exists(prefix + ".index"):
            make_weights(prefix, num_classes=21, width_multiplier=args.width_multiplier,
                         fc_width=args.fc_width)
        if args.only in (None, "video"):
            bench_video(prefix, work, args)
        if args.only in (None, "litert"):
            bench_litert(prefix, work, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
