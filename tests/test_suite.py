"""bench/suite.py: the goals from a results dict, the report, the arguments, the
peers' plumbing (a fake peer python) and one small end-to-end run."""

import json
import os
import stat
import subprocess

import pytest

from bench import suite
from fcn_graph.core.errors import run_cli


def _row(median, *, low=False, **extra):
    row = {"median_ms": median, "min_ms": median * 0.9, "gflop": 10.0,
           "gflops": 10.0 / median * 1000, "sgemm_fraction": 0.5, "low_precision": low}
    row.update(extra)
    return row


def _results(*, tf=100.0, onnx=95.0, bf16=50.0, int8=40.0, peer=110.0, train=900.0,
             train_bf16=450.0, peer_train=1000.0, agree=0.999, full=True, openvino=120.0,
             openvino_bf16=60.0, litert=150.0):
    """A results dict as run_suite returns it: every part measured (the other
    runtimes in the cases the peers ran)."""
    def case(peer_ms):
        rows = {"ours": {"tf": _row(tf), "onnxruntime": _row(onnx, label_agreement_vs_tf=1.0),
                         "tf-bf16": _row(bf16, low=True, label_agreement_vs_tf=agree),
                         "onnxruntime-int8": _row(int8, low=True, label_agreement_vs_tf=agree)},
                "peers": {}}
        if peer_ms is not None:
            rows["peers"] = {"onnxruntime": _row(peer_ms), "torch-eager": _row(peer_ms * 2),
                             "openvino": _row(openvino),
                             "openvino-bf16": _row(openvino_bf16, low=True),
                             "litert": _row(litert)}
        return rows
    return {
        "suite_started_utc": "2026-01-01T00:00:00Z", "seconds": 1.0,
        "load_start": [1.0, 1.0, 1.0], "load_end": [2.0, 2.0, 2.0],
        "settings": {"full_width": full, "skip": [], "rounds": 2, "warmup": 2, "repeats": 5,
                     "width_multiplier": 1.0, "fc_width": 4096},
        "not_run": {}, "peers_unavailable": {},
        "sgemm": {"median_gflops": 200.0, "best_gflops": 210.0},
        "inference": {"224_b1": case(peer), "512_b1": case(peer), "voc_b1": case(None)},
        "training": {"ours": {"tf": _row(train, sgemm_fraction=0.9),
                              "tf-bf16": _row(train_bf16, low=True, sgemm_fraction=1.8)},
                     "peers": {"tf-xla": _row(peer_train)}},
        "cold_start": {"runs": [
            {"name": "tf", "engine": "tf", "wall_s": 5.0, "peak_bytes": 1.4e9},
            {"name": "onnxruntime cache miss", "engine": "onnxruntime", "wall_s": 9.0,
             "peak_bytes": 2.9e9},
            {"name": "onnxruntime cache hit", "engine": "onnxruntime", "wall_s": 2.0,
             "peak_bytes": 1.0e9}], "fastest_engine": "onnxruntime", "peak_from": "rusage"},
        "folder": {"engine": "onnxruntime", "images": 100, "folder_rate": 0.96,
                   "network_rate": 1.0, "ratio": 0.96},
        "tiles": {"large": {"peak_mib": 2000, "tiles": 12, "tiles_run": 4, "tile_size": 1024,
                            "seconds_per_tile": 3.0},
                  "agreement": {"agreement": 0.9999, "max_logit_difference": 1e-6}},
    }


def _status(goals):
    return {goal["goal"].split(" (")[0]: goal["status"] for goal in goals}


def test_goals_all_met():
    goals = suite.goals(_results())
    assert len(goals) == 15
    # labels of random weights are informative only: the goal is on trained models
    assert all(goal["status"] == ("informative" if "random weights" in goal["goal"] else "met")
               for goal in goals), goals
    by_goal = {goal["goal"].split(" (")[0]: goal for goal in goals}
    # figures computed from the dict: 100 / 95 ms, the worst case named
    default = by_goal["default engine within 10 % of the fastest FP32 engine"]
    assert default["figure"].endswith("tf 1.05x of onnxruntime")
    peer = by_goal["fastest FP32 engine faster than the best peer"]
    assert "onnxruntime 0.86x of peer onnxruntime" in peer["figure"]
    assert "no peer figure: voc_b1" in peer["figure"]
    assert by_goal["bfloat16 at 512x512 b1 faster than the best FP32 peer"]["figure"] == \
        "tf-bf16 2.20x faster than peer onnxruntime"
    cold = by_goal["cold start, one 500x375 JPEG, the engine fastest to start"]
    assert cold["figure"] == "onnxruntime cache hit: 2.00 s, 1.00 GB"
    bf16 = by_goal["training step in bfloat16"]
    assert bf16["figure"] == "tf-bf16 450 ms, 0.45x of peer tf-xla, 180 %* (22 GFLOP/s)"
    assert bf16["target"] == "< 1.00x and >= 85 %*"


def test_goals_not_met_at_the_edges():
    # tf 1.12x of onnxruntime, bf16 only 1.1x of the peer, agreement just under
    # OpenVINO f32 1.11x faster than tf, OpenVINO bf16 1.105x faster than int8
    results = _results(tf=112.0, onnx=100.0, bf16=100.0, int8=65.2, peer=110.0, agree=0.994,
                       train=1001.0, train_bf16=999.0, openvino=101.0, openvino_bf16=59.0)
    results["folder"]["ratio"] = 0.949
    results["cold_start"]["runs"][2]["peak_bytes"] = 1.5e9
    results["tiles"]["large"]["peak_mib"] = 2862  # 3.0011 GB
    results["training"]["ours"]["tf"]["sgemm_fraction"] = 0.849
    status = _status(suite.goals(results))
    assert status == {
        "default engine within 10 % of the fastest FP32 engine": "NOT met",
        "other runtimes on our exported files: the default engine": "NOT met",
        "other runtimes on our exported files: our fastest bfloat16 or int8 engine against "
        "OpenVINO bf16": "NOT met",
        "fastest FP32 engine faster than the best peer": "met",
        "bfloat16 at 512x512 b1 faster than the best FP32 peer": "NOT met",
        "int8 at 512x512 b1 faster than the best FP32 peer": "NOT met",
        "bfloat16 labels equal to FP32": "informative",
        "int8 labels equal to FP32": "informative",
        "cold start, one 500x375 JPEG, the engine fastest to start": "NOT met",
        "folder of 500x375 JPEGs at network speed": "NOT met",
        "6000x4000 tiled, full VGG19, peak RSS": "NOT met",
        "tiled labels equal to whole-image labels": "met",
        "training step": "NOT met",
        "training step at least 85 % of sgemm": "NOT met",
        "training step in bfloat16": "met",
    }
    # bfloat16 at 84.9 % of the FP32 sgemm, or no faster than the peer
    results["training"]["ours"]["tf-bf16"]["sgemm_fraction"] = 0.849
    assert _status(suite.goals(results))["training step in bfloat16"] == "NOT met"
    results = _results(train_bf16=1000.0)
    assert _status(suite.goals(results))["training step in bfloat16"] == "NOT met"


@pytest.mark.parametrize("default, tf, status, figure", [
    ("onnxruntime", 112.0, "met", "onnxruntime the fastest in every case"),
    ("tf", 112.0, "NOT met", "worst 224x224 b1: tf 1.12x of onnxruntime"),
    ("onnxruntime", 90.0, "NOT met", "worst 224x224 b1: onnxruntime 1.11x of tf"),
])
def test_the_default_engine_goal_judges_what_engine_auto_runs(default, tf, status, figure):
    results = _results(tf=tf, onnx=100.0)
    results["settings"]["default_engine"] = default
    goal = suite.goals(results)[0]
    assert goal["goal"] == ("default engine within 10 % of the fastest FP32 engine "
                            f"({default}, what --engine auto runs here)")
    assert (goal["status"], goal["figure"]) == (status, figure)


def test_goals_with_a_missing_peer_and_parts():
    results = _results(peer=None)
    results["peers_unavailable"] = {"torch-eager": "--peer-python /nope: not found"}
    results["training"]["peers"] = {"tf-xla": {"error": "timeout after 900 s"}}
    results["not_run"] = {"tf-bf16": "the CPU has no bf16 units"}
    for case in results["inference"].values():
        del case["ours"]["tf-bf16"]
    del results["training"]["ours"]["tf-bf16"]
    del results["folder"], results["tiles"]
    by_goal = {goal["goal"]: goal for goal in suite.goals(results)}
    peer = by_goal["fastest FP32 engine faster than the best peer"]
    assert peer["status"] == "not measured"
    assert "peer torch-eager: --peer-python /nope: not found" in peer["figure"]
    bf16 = by_goal["bfloat16 at 512x512 b1 faster than the best FP32 peer"]
    assert bf16["status"] == "not measured" and "no bf16 units" in bf16["figure"]
    training = by_goal["training step (224x224 b2) faster than the best peer's"]
    assert training["status"] == "not measured"
    bf16_training = by_goal["training step in bfloat16 (train.precision), vs the best peer and "
                            "FP32 sgemm"]
    assert bf16_training["status"] == "not measured"
    assert bf16_training["figure"] == "not measured (the CPU has no bf16 units)"
    assert by_goal["folder of 500x375 JPEGs at network speed"]["figure"] == \
        "not measured (folder skipped)"
    assert by_goal["6000x4000 tiled, full VGG19, peak RSS"]["status"] == "not measured"
    # the goals within our own engines still count
    default = "default engine within 10 % of the fastest FP32 engine"
    assert by_goal[default + " (tf, what --engine auto runs here)"]["status"] == "met"


def test_goals_at_a_reduced_width_are_not_compared_with_full_size_targets():
    by_goal = {goal["goal"]: goal for goal in suite.goals(_results(full=False))}
    assert by_goal["fastest FP32 engine faster than the best peer"]["status"] == \
        "not comparable (reduced width)"
    assert by_goal["cold start, one 500x375 JPEG, the engine fastest to start"]["status"].startswith(
        "not comparable")
    assert by_goal["tiled labels equal to whole-image labels (1024x768)"]["status"] == "met"


def test_goals_of_skipped_peers_say_so():
    results = _results(peer=None)
    results["settings"]["skip"] = ["peers"]
    results["training"]["peers"] = {}
    by_goal = {goal["goal"]: goal for goal in suite.goals(results)}
    assert by_goal["fastest FP32 engine faster than the best peer"]["figure"] == \
        "not measured (peers skipped)"


def test_report_of_a_missing_peer_and_a_failed_one():
    results = _results()
    results["peers_unavailable"] = {"torch-compile-freeze": "--peer-python /nope: not found"}
    results["inference"]["224_b1"]["peers"]["tf-xla"] = {"error": "exit status 1: OOM"}
    results["goals"] = suite.goals(results)
    text = suite.format_report(results)
    lines = text.splitlines()
    assert "peer torch-compile-freeze: not run: --peer-python /nope: not found" in lines
    assert sum("torch-compile-freeze" in line for line in lines) == 1  # one line, not per case
    assert any(line.split() == ["peer", "tf-xla", "failed:", "exit", "status", "1:", "OOM"]
               for line in lines), text
    assert "  (the peers' scripts have no figure for this case)" in lines  # voc_b1
    assert "  best peer: onnxruntime, 110.0 ms" in lines
    row = next(line for line in lines if line.startswith("  tf-bf16"))
    assert "50%*" in row and "0.45x" in row and "99.90%" in row, row
    assert "load average (1/5/15 min): start 1.00/1.00/1.00, end 2.00/2.00/2.00" in lines
    assert lines[-1].endswith(": met") and lines[-16] == "goals:"


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("argv,expected", [
    (["--rounds", "0"], "argument --rounds: expected an integer in 1..1000000, found '0'"),
    (["--rounds", "two"], "found 'two'"),
    (["--skip", "peers,nope"], "--skip: unknown nope; expected a comma-separated list of sgemm"),
    (["--cases", "224_b1,train_b2"], "--cases: unknown train_b2"),
    (["--quick", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_argument_errors_are_one_line(capsys, argv, expected):
    assert run_cli(suite.main, argv, prog="bench/suite.py") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("bench/suite.py: error: "), err
    assert expected in err, err


def test_work_and_out_that_are_not_the_suites_are_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    report = tmp_path / "report.json"
    report.write_text('{"something": "else"}')
    for argv, expected in (
            (["--work", str(tmp_path / "file")], "exists and is not a folder"),
            (["--work", str(tmp_path / "busy")], "a folder of other files"),
            (["--out", str(report), "--skip", ",".join(suite.PARTS)],
             "exists and was not written by fcn_graph")):
        assert run_cli(suite.main, argv, prog="bench/suite.py") == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err, err
    assert report.read_text() == '{"something": "else"}'
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_help_gives_the_expected_duration(capsys):
    with pytest.raises(SystemExit) as exit_:
        suite.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    minutes = round(suite.estimate_seconds() / 60)
    assert f"(about {minutes} min on 2 cores" in out and "--skip PARTS" in out
    assert suite.estimate_seconds(3) > suite.estimate_seconds(2) > \
        suite.estimate_seconds(2, parts=("inference",))


# --------------------------------------------------------------------------- the peers

FAKE_PYTHON = r"""#!/bin/sh
# A stand-in for the peers' python: the version check, the ONNX export and
# one JSON line per case, as the peers' scripts print them.
echo "$*" >> "$(dirname "$0")/calls.txt"
if [ "$1" = "-c" ]; then echo "9.9.9"; exit 0; fi
case "$*" in
  *--export*) mkdir -p "$3" && : > "$3/fcn8s_vgg19.onnx"; echo exported; exit 0;;
  *compile_freeze*) echo '{"peer": "torch-compile-freeze", "error": "RuntimeError: boom"}'; exit 1;;
  *tffunc*) echo "Traceback: died" >&2; exit 3;;
esac
echo "some log line"
echo '{"peer": "p", "case": "c", "runs": 2, "median_ms": 50.0, "min_ms": 45.0, "gflop": 10.0, "gflops_per_s_median": 200.0, "peak_rss_run_mib": 100.0, "first_call_s": 1.0}'
"""


def _fake_peers(tmp_path):
    peers_dir = tmp_path / "peers"
    peers_dir.mkdir()
    (peers_dir / "fcn_spec.py").write_text("")
    python = tmp_path / "bin" / "python"
    python.parent.mkdir()
    python.write_text(FAKE_PYTHON)
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    return peers_dir, python


def _peer_args(peers_dir, python, **extra):
    argv = ["--peers-dir", str(peers_dir), "--peer-python", str(python),
            "--peer-tf-python", str(python)]
    for key, value in extra.items():
        argv += [f"--{key.replace('_', '-')}", value]
    return suite.parse_args(argv)


def test_peer_plumbing_with_a_fake_peer_python(tmp_path):
    peers_dir, python = _fake_peers(tmp_path)
    args = _peer_args(peers_dir, python)
    found, problem = suite.versions(str(python))
    assert problem is None and found["torch"] == "9.9.9"
    peers = suite.Peers(args, str(tmp_path), problem, threads=2)
    assert peers.unavailable == {}
    peers.export_onnx()
    assert peers.onnx == str(tmp_path / "peer_onnx" / "fcn8s_vgg19.onnx")
    record = peers.run("onnxruntime", "512_b1")
    assert record["median_ms"] == 50.0
    row = suite.peer_row(record, sgemm_gflops=400.0)
    assert row["sgemm_fraction"] == 0.5 and row["min_ms"] == 45.0
    assert peers.run("torch-compile-freeze", "224_b1") == {"error": "RuntimeError: boom"}
    assert peers.run("tf-function", "224_b1") == {"error": "exit status 3: Traceback: died"}
    calls = (tmp_path / "bin" / "calls.txt").read_text().splitlines()
    assert f"peer_onnxrt.py --model {peers.onnx} --case 512x512_b1" in calls
    assert "peer_torch.py --variant compile_freeze --case 224x224_b1" in calls
    # the peers run with the suite's calls and threads, and write no file of their own
    assert peers.env["BENCH_MIN_RUNS"] == str(args.repeats) and peers.env["BENCH_THREADS"] == "2"
    assert "BENCH_OUT" not in peers.env


def test_peers_that_cannot_run_are_named_with_the_reason(tmp_path):
    peers_dir, python = _fake_peers(tmp_path)
    missing = tmp_path / "no" / "python"
    args = _peer_args(peers_dir, missing)
    args.peer_tf_python = str(python)
    _, problem = suite.versions(str(missing))
    assert problem == f"--peer-python {missing}: not found or not executable"
    peers = suite.Peers(args, str(tmp_path), problem, threads=2)
    assert set(peers.unavailable) == {"torch-eager", "torch-compile-freeze", "onnxruntime"}
    assert set(peers.unavailable.values()) == {problem}
    args = _peer_args(tmp_path / "nowhere", python)
    peers = suite.Peers(args, str(tmp_path), None, threads=2)
    assert set(peers.unavailable) == set(suite.PEERS)
    assert "the peers' scripts (fcn_spec.py) are not there" in peers.unavailable["tf-xla"]


def test_a_failed_export_leaves_the_other_peers(tmp_path):
    peers_dir, python = _fake_peers(tmp_path)
    python.write_text(FAKE_PYTHON.replace('mkdir -p "$3" && : > "$3/fcn8s_vgg19.onnx"',
                                          "echo 'export: no dynamo' >&2; exit 1"))
    peers = suite.Peers(_peer_args(peers_dir, python), str(tmp_path), None, threads=2)
    peers.export_onnx()
    assert peers.unavailable == {
        "onnxruntime": "the peers' ONNX export failed: exit status 1: export: no dynamo"}
    assert peers.run("torch-eager", "224_b1")["median_ms"] == 50.0


def test_rounds_keep_the_best_median_and_alternate():
    rows = [{"median_ms": 30.0, "min_ms": 20.0}, {"error": "x"},
            {"median_ms": 25.0, "min_ms": 24.0}]
    best = suite.best_round(rows)
    assert best["median_ms"] == 25.0 and best["min_ms"] == 20.0 and best["rounds"] == [30.0, 25.0]
    assert suite.best_round([{"error": "a"}, {"error": "b"}]) == {"error": "b"}
    assert suite.interleave(["tf", "onnxruntime", "tf-bf16"], ["p1", "p2"]) == [
        ("ours", "tf"), ("peer", "p1"), ("ours", "onnxruntime"), ("peer", "p2"),
        ("ours", "tf-bf16")]


# --------------------------------------------------------------------------- end to end


def test_agreement_and_error_against_tf(tmp_path):
    import numpy as np
    want = np.zeros((1, 2, 5, 3), np.float32)
    want[..., 0] = 1.0
    got = want.copy()
    got[0, 0, 0] = [0.0, 2.0, 0.0]  # one pixel of ten changes its label
    np.save(tmp_path / "tf.npy", want)
    np.save(tmp_path / "int8.npy", got)
    rows = {"ours": {"tf": {"median_ms": 1.0, "logits_file": str(tmp_path / "tf.npy")},
                     "onnxruntime-int8": {"median_ms": 1.0,
                                          "logits_file": str(tmp_path / "int8.npy")},
                     "onnxruntime": {"error": "failed"}}, "peers": {}}
    suite.add_agreement(rows)
    assert rows["ours"]["onnxruntime-int8"]["label_agreement_vs_tf"] == pytest.approx(0.9)
    assert rows["ours"]["onnxruntime-int8"]["max_rel_error_vs_tf"] == pytest.approx(2.0)
    assert all("logits_file" not in row for row in rows["ours"].values())


def test_quick_run_end_to_end(tmp_path, monkeypatch, capsys):
    # the default engine on one case at the --quick width; peers and the slow parts skipped
    monkeypatch.setattr(suite, "our_variants",
                        lambda machine: (["tf"], {"tf-bf16": "left out here"}))
    monkeypatch.setattr(suite, "choose_engine", lambda requested: ("tf", "auto: tf here"))
    out = tmp_path / "suite.json"
    argv = ["--quick", "--cases", "224_b1", "--work", str(tmp_path / "work"), "--out", str(out),
            "--skip", "peers,runtimes,sgemm,training,cold,folder,tiles"]
    assert suite.main(argv) == 0
    text = capsys.readouterr().out
    results = json.loads(out.read_text())
    row = results["inference"]["224_b1"]["ours"]["tf"]
    assert row["median_ms"] > 0 and row["gflops"] > 0 and row["rounds"] == [round(row["median_ms"], 1)]
    assert "logits_file" not in row
    assert "inference 224x224 b1 (ms per call, best median of the rounds)" in text
    assert "  tf-bf16                   not run: left out here" in text
    assert "VGG widths x0.125, fc 256" in text
    statuses = {goal["goal"].split(" (")[0]: goal["status"] for goal in results["goals"]}
    assert statuses["fastest FP32 engine faster than the best peer"] == "not measured"
    assert statuses["default engine within 10 % of the fastest FP32 engine"] == "met"
    # the work folder is kept and marked, and a second run may use it again
    assert (tmp_path / "work" / suite.WORK_MARK).exists()
    suite.check_work_folder(str(tmp_path / "work"))


def test_cold_start_refuses_fewer_than_3_images_a_round(capsys):
    from bench import cold_start
    with pytest.raises(SystemExit):
        cold_start.main(["--images", "20", "--rounds", "10"])
    assert "--images 20 for --rounds 10: expected at least 3 images a round" in \
        capsys.readouterr().err


def test_folder_rate_without_inference_uses_the_default_engine(tmp_path, monkeypatch):
    monkeypatch.setattr(suite, "choose_engine", lambda requested: ("onnxruntime", "auto"))
    given = []

    def run_cold(args, prefix, work, fastest):
        given.append(fastest)
        return {}

    monkeypatch.setattr(suite, "run_cold", run_cold)
    argv = ["--quick", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "s.json"),
            "--skip", "peers,sgemm,inference,training,tiles"]
    assert suite.main(argv) == 0
    assert given == ["onnxruntime"]


def test_the_int8_variant_of_the_onnxruntime_engine():
    from bench import cases, worker
    assert cases.variant_settings("onnxruntime-int8") == ("onnxruntime", {"precision": "int8"}, {})
    assert cases.parse_variants("tf,onnxruntime-int8") == ["tf", "onnxruntime-int8"]
    for name in ("tf-int8", "onnxruntime-bf16", "onnxruntime-int8-xla"):
        with pytest.raises(ValueError):
            cases.variant_settings(name)
    assert worker.onnx_path("/w/p", "int8") == "/w/p.int8.onnx"
    assert worker.onnx_path("/w/p") == "/w/p.onnx"
    assert suite.is_low_precision("onnxruntime-int8") and not suite.is_low_precision("tf")


def test_the_other_runtimes_are_variants_on_the_exported_files():
    from bench import cases, worker
    assert cases.variant_settings("openvino") == ("openvino", {}, {})
    assert cases.variant_settings("openvino-bf16") == ("openvino", {"precision": "bfloat16"}, {})
    assert cases.variant_settings("litert") == ("litert", {}, {})
    for name in ("litert-bf16", "openvino-int8", "openvino-xla", "openvino-reference"):
        with pytest.raises(ValueError):
            cases.variant_settings(name)
    assert worker.tflite_path("/w/p") == "/w/p.tflite"
    assert suite.is_low_precision("openvino-bf16") and not suite.is_low_precision("openvino")


@pytest.mark.parametrize("missing, bfloat16, runs, why", [
    ("openvino", "native", ["litert"],
     {"openvino": "openvino is not installed (pip install openvino)",
      "openvino-bf16": "openvino is not installed (pip install openvino)"}),
    ("ai_edge_litert", "refused", ["openvino"],
     {"openvino-bf16": "the CPU has no bf16 units (avx512_bf16, amx_bf16)",
      "litert": "ai-edge-litert is not installed (pip install ai-edge-litert)"}),
    (None, "native", ["openvino", "openvino-bf16", "litert"], {}),
])
def test_a_runtime_that_cannot_run_says_why(monkeypatch, missing, bfloat16, runs, why):
    import importlib.util
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name: None if name == missing else object())
    assert suite.runtime_variants({"bfloat16": bfloat16}) == (runs, why)


def test_the_best_peer_is_a_float32_one():
    rows = {"ours": {}, "peers": {"openvino-bf16": _row(10.0, low=True), "litert": {"error": "x"},
                                  "openvino": _row(30.0), "torch-eager": _row(40.0)}}
    assert suite.best_peer(rows)[0] == "openvino"
    rows["peers"]["openvino"] = {"error": "y"}
    assert suite.best_peer(rows)[0] == "torch-eager"


def test_labels_against_the_onnxruntime_engine(tmp_path):
    import numpy as np
    want = np.zeros((2, 1, 5, 3), np.float32)
    want[..., 1] = 1.0
    np.save(tmp_path / "ort.npy", want)
    np.save(tmp_path / "tf.npy", want)
    got = want.copy()
    got[0, 0, :2] = [3.0, 0.0, 0.0]  # two pixels of ten change their label
    np.save(tmp_path / "openvino.npy", got)
    rows = {"ours": {"tf": {"logits_file": str(tmp_path / "tf.npy")},
                     "onnxruntime": {"logits_file": str(tmp_path / "ort.npy")}},
            "peers": {"openvino": {"logits_file": str(tmp_path / "openvino.npy")},
                      "litert": {"error": "failed"}, "torch-eager": {"median_ms": 1.0}}}
    suite.add_agreement(rows)
    assert rows["peers"]["openvino"]["label_agreement_vs_onnxruntime"] == pytest.approx(0.8)
    assert "label_agreement_vs_tf" not in rows["peers"]["openvino"]
    assert rows["ours"]["tf"]["label_agreement_vs_onnxruntime"] == 1.0
    assert "label_agreement_vs_onnxruntime" not in rows["ours"]["onnxruntime"]
    assert rows["ours"]["onnxruntime"]["label_agreement_vs_tf"] == 1.0
    assert "label_agreement_vs_onnxruntime" not in rows["peers"]["torch-eager"]
    assert all("logits_file" not in row for side in rows.values() for row in side.values())


def test_goals_and_report_of_the_other_runtimes():
    # OpenVINO f32 faster than the default engine (tf, 100 ms); no bf16 units for its bf16
    results = _results(openvino=80.0)
    results["not_run"] = {"openvino-bf16": "the CPU has no bf16 units"}
    for case in results["inference"].values():
        case["peers"].pop("openvino-bf16", None)
        if "litert" in case["peers"]:
            case["peers"]["litert"]["label_agreement_vs_onnxruntime"] = 0.5
    results["header"] = {"cpu_model": "CPU", "threads": 2, "versions": {
        "tensorflow": "2.21.0", "onnxruntime": "1.32.0", "openvino": "2026.4.1"}}
    results["goals"] = suite.goals(results)
    by_goal = {goal["goal"]: goal for goal in results["goals"]}
    default = by_goal["other runtimes on our exported files: the default engine (tf) against "
                      "OpenVINO f32 and LiteRT"]
    assert (default["status"], default["figure"]) == (
        "NOT met", "worst 224x224 b1: tf 100.0 ms, 1.25x of openvino 80.0 ms")
    low = by_goal["other runtimes on our exported files: our fastest bfloat16 or int8 engine "
                  "against OpenVINO bf16"]
    assert (low["status"], low["figure"]) == (
        "not measured", "not measured (peer openvino-bf16: the CPU has no bf16 units)")
    lines = suite.format_report(results).splitlines()
    assert "threads 2; TensorFlow 2.21.0, ONNX Runtime 1.32.0, OpenVINO 2026.4.1, LiteRT not " \
        "installed, torch not available (peers' venv)" in lines
    assert "  peer openvino-bf16        not run: the CPU has no bf16 units" in lines
    row = next(line for line in lines if line.startswith("  peer litert"))
    assert row.split()[-1] == "50.00%" and row.split()[2] == "150.0", row
    assert "  best peer: openvino, 80.0 ms" in lines
    # at a reduced width the runtimes' figures are shown but not judged
    results["settings"]["full_width"] = False
    assert {goal["status"] for goal in suite.goals(results)
            if goal["goal"].startswith("other runtimes")} == {
        "not comparable (reduced width)", "not measured"}


def test_folder_rate_splits_the_folder_into_rounds_beside_the_network(monkeypatch, tmp_path):
    from bench import cold_start
    folder = tmp_path / "folder"
    folder.mkdir()
    for k in range(16):
        (folder / f"img{k:03d}.jpg").write_bytes(bytes([k]))
    # Round i: the folder run's images `folder_periods[i]` s apart, then the
    # network alone at `network_periods[i]` s a call; the runs must alternate.
    folder_periods, network_periods = [0.5, 0.9, 0.55], [0.45, 0.5, 0.85]
    calls, seen = [], []

    def measure(command, env):
        index = calls.count("infer")
        calls.append("infer")
        part = command[command.index("fcn_graph.infer") + 1]
        assert command[command.index("--output-dir") + 1].endswith(f"f_onnxruntime_{index}")
        names = sorted(os.listdir(part))
        seen.extend((folder / name).read_bytes() == (tmp_path / part / name).read_bytes()
                    for name in names)
        lines = [(10.0 + k * folder_periods[index], f"{name}: 500x375, {700 + k} ms -> x")
                 for k, name in enumerate(names)]
        return 1.0, 1, [(0.0, "checkpoint ...")] + lines

    def run(command, **kwargs):
        calls.append("network")
        period = network_periods[calls.count("network") - 1]
        return subprocess.CompletedProcess(command, 0, stdout=f"warm\n{period}\n", stderr="")

    monkeypatch.setattr(cold_start, "measure", measure)
    monkeypatch.setattr(cold_start.subprocess, "run", run)
    got = cold_start.folder_rate(str(tmp_path), {}, "w", "p.jpg", str(folder), "onnxruntime",
                                 10, rounds=3)
    assert calls == ["infer", "network"] * 3
    assert len(seen) == 16 and all(seen)                # every image once: 5, 5, 6
    assert sorted(len(os.listdir(f"{folder}_{i}")) for i in range(3)) == [5, 5, 6]
    assert got["rounds"] == 3 and got["images"] == 16
    assert got["folder_rate"] == pytest.approx(1 / 0.55)
    assert got["network_rate"] == pytest.approx(1 / 0.5)
    assert got["ratio"] == pytest.approx(0.5 / 0.55) and got["met"] is False
    assert got["round_ratios"] == pytest.approx([0.9, 0.5 / 0.9, 0.85 / 0.55])
    assert got["network_ms_in_infer"] == 702
    with pytest.raises(ValueError, match="16 images for 6 rounds; expected at least 3 a round"):
        cold_start.folder_rate(str(tmp_path), {}, "w", "p.jpg", str(folder), "onnxruntime", 10,
                               rounds=6)
    lines_of_two = [(1.0, "a.jpg: 1x1, 5 ms -> a"), (2.0, "b.jpg: 1x1, 5 ms -> b")]
    monkeypatch.setattr(cold_start, "measure", lambda command, env: (1.0, 1, lines_of_two))
    with pytest.raises(RuntimeError, match="2 images done; expected at least 3"):
        cold_start.folder_rate(str(tmp_path), {}, "w", "p.jpg", str(folder), "onnxruntime", 10)
