"""Choices made per CPU (`fcn_graph.host.choice`): the rule from the CPU's flags,
the environment winning, cached calibrations (good, broken or foreign), the
derivation from timings, oneDNN set before TensorFlow loads, and the
calibrate command (one tiny real run)."""

import json
import os
import subprocess
import sys

import pytest

from fcn_graph import calibrate
from fcn_graph.core.errors import run_cli
from fcn_graph.core.fileio import write_json_atomic
from fcn_graph.core.ranges import max_threads
from fcn_graph.host import choice, cpuinfo, kernel_timing

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ZEN3 = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\n"
        "model name\t: AMD EPYC 7R13 Processor\n"
        "flags\t\t: fpu sse2 avx avx2 fma\n")
ZEN4 = ("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R14\n"
        "flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_bf16 avx512_vnni avx512vl\n")
SAPPHIRE_RAPIDS = ("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) "
                   "Processor\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512_vnni avx512_bf16 "
                   "avx_vnni amx_bf16 amx_tile amx_int8\n")
SKYLAKE = "model name\t: Intel Xeon Gold 6148\nflags\t\t: sse2 avx avx2 fma avx512f avx512bw\n"
GRAVITON = "processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\nCPU implementer\t: 0x41\n"


def fake_cpuinfo(monkeypatch, tmp_path, text):
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    monkeypatch.setattr(cpuinfo, "CPUINFO_PATH", str(path))


# ---------------------------------------------------------------- the rule

@pytest.mark.parametrize("text,inference,training", [
    (ZEN3, False, True),             # AVX2 only: oneDNN slower at inference, faster training
    (ZEN4, True, True),              # AVX-512 with bf16 and VNNI
    (SAPPHIRE_RAPIDS, True, True),   # AVX-512 with AMX
    (SKYLAKE, False, True),          # AVX-512 without VNNI, bf16 or AMX
    ("flags\t: fpu sse2 avx\n", False, False),
])
def test_the_rule_by_cpu_flags(text, inference, training):
    for task in choice.TASKS:
        choices = choice.choose(task, text=text, environ={})
        assert (choices.onednn_inference, choices.onednn_training) == (inference, training)
        assert choices.onednn == (inference if task == "inference" else training)
        assert (choices.fc_form, choices.row_block, choices.upsample_form) == (
            "matmul", choice.DEFAULT_ROW_BLOCK, "phases")
        assert all(source.startswith("rule: ") for source in choices.sources.values())
    reasons = choice.rule_choices(cpuinfo.parse_cpu_flags(text)).sources
    assert reasons["onednn_inference"] == {
        ZEN3: "rule: no avx512f", SKYLAKE: "rule: avx512f without avx512_vnni or avx512_bf16 "
        "or amx_tile or amx_bf16 or amx_int8", ZEN4: "rule: avx512f with avx512_vnni, "
        "avx512_bf16"}.get(text, reasons["onednn_inference"])


@pytest.mark.parametrize("text,why", [("", "no CPU flags"), ("model name : ?\n", "no CPU flags"),
                                      (GRAVITON, "not an x86 CPU")])
def test_without_x86_flags_tensorflow_keeps_its_default(text, why, monkeypatch, tmp_path):
    fake_cpuinfo(monkeypatch, tmp_path, text)
    choices = choice.choose("training", text=text, environ={})
    assert choices.onednn_inference is None and choices.onednn_training is None
    assert choices.sources["onednn_training"] == f"rule: {why}, TensorFlow's default"
    environ = {}
    assert choice.apply_onednn("training", environ=environ).onednn is None
    assert environ == {}


def test_the_environment_wins_for_onednn(tmp_path):
    for value, expected in (("0", False), ("1", True), ("false", False), ("TRUE", True)):
        choices = choice.choose("inference", text=ZEN4 if expected is False else ZEN3,
                                    environ={"TF_ENABLE_ONEDNN_OPTS": value})
        assert choices.onednn_inference is expected and choices.onednn_training is expected
        assert choices.sources["onednn_inference"] == f"environment TF_ENABLE_ONEDNN_OPTS={value}"
    # over a calibration too, whose forms are then those measured with that setting
    write_timings(tmp_path, ZEN4, timings(changes={(False, "forward", "conv7", "conv"): 1e-3}))
    choices = choice.choose("inference", text=ZEN4, root=str(tmp_path), threads=2,
                                environ={"TF_ENABLE_ONEDNN_OPTS": "0"})
    assert choices.onednn is False and choices.fc_form == "conv"
    assert choices.sources["fc_form"].startswith("calibration ")


def test_apply_onednn_sets_the_choice_only_where_unset(monkeypatch, tmp_path):
    fake_cpuinfo(monkeypatch, tmp_path, ZEN3)
    environ = {}
    assert choice.apply_onednn("inference", environ=environ).onednn is False
    assert environ == {"TF_ENABLE_ONEDNN_OPTS": "0"}
    environ = {}
    choice.apply_onednn("training", environ=environ)
    assert environ == {"TF_ENABLE_ONEDNN_OPTS": "1"}
    environ = {"TF_ENABLE_ONEDNN_OPTS": "1"}
    assert choice.apply_onednn("inference", environ=environ).onednn is True
    assert environ == {"TF_ENABLE_ONEDNN_OPTS": "1"}
    # bfloat16 runs through oneDNN: turned on whatever the choice
    environ = {}
    choices = choice.apply_onednn("inference", environ=environ, require=True)
    assert environ == {"TF_ENABLE_ONEDNN_OPTS": "1"} and choices.onednn is True
    assert choices.sources["onednn_inference"] == "needed by bfloat16"
    assert choice.process_task() == "inference"


def test_choices_and_forms_are_checked():
    with pytest.raises(ValueError, match="task: expected one of inference, training"):
        choice.choose("serving", text=ZEN3, environ={})
    with pytest.raises(ValueError, match="kernels: expected auto, cpu or reference"):
        choice.choose("inference", text=ZEN3, environ={}, kernels="gpu")
    reference = choice.choose("inference", text=ZEN3, environ={}, kernels="reference")
    assert (reference.fc_form, reference.upsample_form) == ("conv", "transpose")
    assert reference.sources["fc_form"] == "--kernels reference"
    assert choice.parse_fc_form("matmul/all") == ("matmul", 0)
    assert choice.parse_fc_form("conv") == ("conv", None)
    for bad in ("matmul/0", "matmul/x", "dense"):
        with pytest.raises(ValueError, match="unknown conv6/conv7 form"):
            choice.parse_fc_form(bad)
    from fcn_graph.network import cpu_layers
    with pytest.raises(ValueError, match="fc_form: expected one of matmul, conv, found 'fc'"):
        cpu_layers.CpuLayers(fc_form="fc")
    with pytest.raises(ValueError, match="upsample_form: expected"):
        cpu_layers.CpuLayers(upsample_form="bilinear")
    with pytest.raises(ValueError, match="row_block: expected a non-negative integer"):
        cpu_layers.CpuLayers(row_block=-1)


# ---------------------------------------------------------------- calibration

def timings(base=0.010, changes=None):
    """A full timing table, every time `base` seconds but the `changes`:
    (onednn, pass, layer, form) -> seconds, at every input size."""
    changes = changes or {}
    rows = []
    for onednn in (False, True):
        for pass_, inputs in (("forward", (224, 512)), ("training", (224,))):
            for size in inputs:
                forms = ([(layer, form) for layer in choice.FC_LAYERS
                          for form in choice.FC_CANDIDATES]
                         + [(layer, form) for layer in choice.UPSAMPLE_LAYERS
                            for form in choice.UPSAMPLE_FORMS]
                         + [(choice.BODY_LAYER, "conv")])
                for layer, form in forms:
                    rows.append({"onednn": onednn, "pass": pass_, "input": size, "batch": 1,
                                 "layer": layer, "form": form, "count": 1.0,
                                 "seconds": changes.get((onednn, pass_, layer, form), base)})
    return rows


def write_timings(root, text, rows, threads=2):
    key = choice.timing_key(threads=threads, text=text)
    path = choice.timing_path(key, str(root))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_json_atomic(path, choice.timing_record(key, rows, 1.0))
    return path


def test_choices_derived_from_timings():
    rows = timings(changes={
        # inference: oneDNN on is faster in the summed time (the body), blocks of 200 by 10 %
        (True, "forward", choice.BODY_LAYER, "conv"): 0.002,
        (True, "forward", "conv6", "matmul/200"): 0.009,
        (True, "forward", "conv7", "matmul/200"): 0.009,
        # ... the transposed upsampling only by 2 %: under the margin, phases kept
        (True, "forward", "conv_t3", "transpose"): 0.0098,
        # with oneDNN off the conv form would win, but off is slower
        (False, "forward", "conv6", "conv"): 0.005,
        # training: oneDNN off faster; there conv and the transposed upsampling win
        (True, "training", choice.BODY_LAYER, "conv"): 0.050,
        (False, "training", "conv6", "conv"): 0.004,
        (False, "training", "conv7", "conv"): 0.004,
        (False, "training", "conv_t1", "transpose"): 0.001,
        (False, "training", "conv_t2", "transpose"): 0.001,
    })
    inference = choice.derive_choices(rows, "inference")
    assert {k: inference[k] for k in ("onednn", "fc_form", "row_block", "upsample_form")} == {
        "onednn": True, "fc_form": "matmul", "row_block": 200, "upsample_form": "phases"}
    assert inference["totals"]["1"] < inference["totals"]["0"]
    training = choice.derive_choices(rows, "training")
    assert {k: training[k] for k in ("onednn", "fc_form", "row_block", "upsample_form")} == {
        "onednn": False, "fc_form": "conv", "row_block": None, "upsample_form": "transpose"}
    # oneDNN forced (the environment): the forms measured with it
    forced = choice.derive_choices(rows, "inference", onednn=False)
    assert (forced["onednn"], forced["fc_form"]) == (False, "conv")
    # a tie keeps the rule's forms
    even = choice.derive_choices(timings(), "training")
    assert (even["fc_form"], even["row_block"], even["upsample_form"]) == ("matmul", 100, "phases")
    # the count weighs a layer: the body counted 20 times turns the sum
    weighed = [dict(r, count=20.0) if r["layer"] == choice.BODY_LAYER else r
               for r in timings(changes={(True, "forward", "body", "conv"): 0.009,
                                         (True, "forward", "conv6", "matmul/100"): 0.020})]
    assert choice.derive_choices(weighed, "inference")["onednn"] is True


def test_a_calibration_round_trip(tmp_path):
    rows = timings(changes={(False, "forward", choice.BODY_LAYER, "conv"): 0.001,
                            (False, "forward", "conv7", "matmul/all"): 0.001,
                            (True, "training", "conv_t2", "transpose"): 0.001})
    path = write_timings(tmp_path, SAPPHIRE_RAPIDS, rows)
    assert path.startswith(str(tmp_path / "calibration"))
    choices = choice.choose("inference", text=SAPPHIRE_RAPIDS, root=str(tmp_path), threads=2,
                                environ={})
    # the rule says on for this CPU; the calibration found off faster
    assert (choices.onednn_inference, choices.onednn_training) == (False, True)
    assert (choices.fc_form, choices.row_block, choices.upsample_form) == ("matmul", 0, "phases")
    assert set(choices.sources.values()) == {f"calibration {path}"}
    training = choice.choose("training", text=SAPPHIRE_RAPIDS, root=str(tmp_path),
                                 threads=2, environ={})
    assert training.upsample_form == "transpose"
    # another thread count, TensorFlow or CPU has its own file: the rule
    for text, threads in ((SAPPHIRE_RAPIDS, 4), (ZEN4, 2)):
        other = choice.choose("inference", text=text, root=str(tmp_path), threads=threads,
                                  environ={})
        assert other.onednn_inference is True and other.sources["fc_form"].startswith("rule")
    table = kernel_timing.format_timings(json.loads(open(path).read()), path)
    assert "inference: oneDNN off" in table and "training: oneDNN on" in table
    assert "forward      512 conv7    matmul/all        1.0     10.0" in table


def _broken(path):
    good = path.read_bytes()
    yield "garbled", b"\x00\xff{not json", "not JSON"
    yield "empty", b"", "not JSON (empty file)"
    yield "truncated", good[:len(good) // 2], "not JSON"
    record = json.loads(good)
    record["key"]["cpu"] = "AMD EPYC 9R14"
    yield "foreign", json.dumps(record).encode(), "measured for"
    record = json.loads(good)
    del record["timings"][3]
    yield "incomplete", json.dumps(record).encode(), ("timings: no forward time of conv6 as "
                                                      "matmul/all at input 224 with oneDNN off")
    record = json.loads(good)
    record["timings"][0]["seconds"] = -1
    yield "negative", json.dumps(record).encode(), "timings[0].seconds: expected a positive"
    yield "list", b"[]", "not a calibration file"


def test_a_broken_calibration_warns_once_and_the_rule_is_used(tmp_path, monkeypatch):
    path = write_timings(tmp_path, ZEN3, timings(base=0.01, changes={
        (True, "forward", choice.BODY_LAYER, "conv"): 0.001}))
    good = choice.choose("inference", text=ZEN3, root=str(tmp_path), threads=2, environ={})
    assert good.onednn is True  # the calibration's, against the rule's off
    cases = list(_broken(pytest.importorskip("pathlib").Path(path)))
    monkeypatch.setattr(choice, "_warned", set())
    for name, data, problem in cases:
        with open(path, "wb") as handle:
            handle.write(data)
        warnings = []
        for _ in range(2):
            choices = choice.choose("inference", text=ZEN3, root=str(tmp_path), threads=2,
                                        environ={}, warn=warnings.append)
            assert choices.onednn is False and choices.sources["fc_form"].startswith("rule"), name
        assert len(warnings) == 1, name  # once per process
        assert "\n" not in warnings[0] and path in warnings[0] and problem in warnings[0], \
            (name, warnings)
        assert warnings[0].endswith("using the rule (python -m fcn_graph.calibrate --force "
                                    "measures again)")
    # a directory or a FIFO in its place
    os.remove(path)
    os.mkdir(path)
    warnings = []
    assert choice.choose("inference", text=ZEN3, root=str(tmp_path), threads=2, environ={},
                             warn=warnings.append).onednn is False
    assert warnings == [f"warning: calibration {path}: Is a directory; using the rule "
                        "(python -m fcn_graph.calibrate --force measures again)"]
    os.rmdir(path)
    os.mkfifo(path)
    warnings = []
    assert choice.choose("inference", text=ZEN3, root=str(tmp_path), threads=2, environ={},
                             warn=warnings.append).onednn is False
    assert "is a FIFO" in warnings[0]


def _fake_worker(rows_for, calls):
    """A stand-in for the measuring processes: writes `rows_for(setting)`."""
    def run(command, env, **kwargs):
        setting = command[command.index("--measure") + 1]
        calls.append((setting, env["TF_ENABLE_ONEDNN_OPTS"]))
        result = command[command.index("--result") + 1]
        with open(result, "w") as handle:
            json.dump(rows_for(setting), handle)
        return subprocess.CompletedProcess(command, 0, "", "")
    return run


def test_run_calibration_writes_atomically_and_keeps_the_old_file(tmp_path, monkeypatch):
    fake_cpuinfo(monkeypatch, tmp_path, ZEN4)
    rows = timings()
    calls = []
    monkeypatch.setattr(kernel_timing.subprocess, "run", _fake_worker(
        lambda s: [r for r in rows if r["onednn"] == (s == "1")], calls))
    root = tmp_path / "cache"
    path, record = kernel_timing.run_timing(threads=2, root=str(root))
    assert calls == [("0", "0"), ("1", "1")]  # one process per setting, off first
    key = choice.timing_key(threads=2)
    assert path == choice.timing_path(key, str(root))
    assert choice.read_timings(path, key) == (rows, None)
    assert record["choices"]["inference"]["fc_form"] == "matmul"
    before = open(path, "rb").read()
    # a failed write (full disk) leaves the previous file and no temporary
    def full(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError, match="No space left"):
        kernel_timing.run_timing(threads=2, root=str(root))
    monkeypatch.undo()
    assert open(path, "rb").read() == before
    assert os.listdir(os.path.dirname(path)) == [os.path.basename(path)]


def test_a_failed_or_wrong_worker_is_one_line(tmp_path, monkeypatch):
    fake_cpuinfo(monkeypatch, tmp_path, ZEN4)

    def failing(command, env, **kwargs):
        return subprocess.CompletedProcess(command, 1, "", "Traceback\n...\nMemoryError\n")
    monkeypatch.setattr(kernel_timing.subprocess, "run", failing)
    with pytest.raises(calibrate.UserError, match=r"^calibration with TF_ENABLE_ONEDNN_OPTS=0 "
                       r"failed: Traceback \| \.\.\. \| MemoryError$"):
        kernel_timing.run_timing(threads=2, root=str(tmp_path))
    # a TensorFlow that ignored the setting
    monkeypatch.setattr(kernel_timing.subprocess, "run", _fake_worker(
        lambda s: [r for r in timings() if r["onednn"]], []))
    with pytest.raises(calibrate.UserError, match="did not set oneDNN"):
        kernel_timing.run_timing(threads=2, root=str(tmp_path))
    assert not os.path.exists(tmp_path / "calibration")


# ---------------------------------------------------------------- the command

@pytest.mark.parametrize("argv,message", [
    (["--threads", "0"], f"argument --threads: expected an integer in 1..{max_threads()}, found '0'"),
    (["--threads", "two"], f"argument --threads: expected an integer in 1..{max_threads()}, found 'two'"),
    (["--show", "--force"], "--show and --force: pick one"),
    (["--scale", "nan"], "argument --scale: expected a number in (0, 1], found 'nan' (not a finite number)"),
    (["--measure", "1"], "--measure: needs --result"),
])
def test_bad_flags_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(calibrate.main, argv, prog="fcn_graph.calibrate")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(f"error: {message}") and "Traceback" not in "".join(err)


def test_a_broken_cached_file_is_replaced_only_with_force(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FCN_GRAPH_CACHE", str(tmp_path))
    key = choice.timing_key(threads=1)
    path = choice.timing_path(key)
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as handle:
        handle.write('{"format": "fcn_graph.calibration", "vers')
    assert run_cli(calibrate.main, ["--threads", "1"], prog="fcn_graph.calibrate") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fcn_graph.calibrate: error: calibration {path}: not JSON (")
    assert err.endswith("); --force replaces it\n") and err.count("\n") == 1
    assert run_cli(calibrate.main, ["--threads", "1", "--show"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"no calibration for this CPU at 1 threads ({path}: not JSON")


def test_help_and_choices_never_import_tensorflow():
    code = ("import sys, contextlib, io\n"
            "from fcn_graph import calibrate, infer, evaluate, train\n"
            "from fcn_graph.host import choice\n"
            "for module in (calibrate, infer, evaluate, train):\n"
            "    with contextlib.redirect_stdout(io.StringIO()):\n"
            "        try:\n"
            "            module.main(['--help'])\n"
            "        except SystemExit:\n"
            "            pass\n"
            "choice.choose('inference'); choice.apply_onednn('training')\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow'))\n")
    env = dict(os.environ, PYTHONPATH=CHECKOUT)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def _onednn_child(task, tmp_path, rows):
    """In a fresh process: apply_onednn(task), then import TensorFlow; returns
    (choice, TensorFlow's IsMklEnabled())."""
    write_timings(tmp_path, cpuinfo.read_cpuinfo(), rows, threads=choice.thread_count())
    code = (f"from fcn_graph.host import choice\n"
            f"choice = choice.apply_onednn({task!r})\n"
            "from fcn_graph.host import session\n"
            "print(choice.onednn, session.onednn_enabled(), choice.sources['onednn_' + "
            f"{task!r}].split()[0])\n")
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    env.update(PYTHONPATH=CHECKOUT, FCN_GRAPH_CACHE=str(tmp_path), TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_apply_onednn_decides_what_tensorflow_runs(tmp_path):
    from fcn_graph.host import session
    if not session.onednn_enabled() and os.environ.get("TF_ENABLE_ONEDNN_OPTS") == "1":
        pytest.skip("this TensorFlow has no oneDNN kernels")
    # inference: a calibration that found oneDNN slower; training: faster
    rows = timings(changes={(True, "forward", "body", "conv"): 1.0,
                            (False, "training", "body", "conv"): 1.0})
    assert _onednn_child("inference", tmp_path, rows) == ["False", "False", "calibration"]
    assert _onednn_child("training", tmp_path, rows) == ["True", "True", "calibration"]


def test_a_tiny_real_calibration(tmp_path):
    env = dict(os.environ, PYTHONPATH=CHECKOUT, FCN_GRAPH_CACHE=str(tmp_path))
    command = [sys.executable, "-m", "fcn_graph.calibrate", "--threads", "1", "--scale", "0.01"]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    key = choice.timing_key(threads=1)
    path = choice.timing_path(key, str(tmp_path))
    assert os.listdir(os.path.dirname(path)) == [os.path.basename(path)]  # no temporary left
    rows, problem = choice.read_timings(path, key)
    assert problem is None and {r["onednn"] for r in rows} == {False, True}
    assert {(r["pass"], r["input"]) for r in rows} == {("forward", 224), ("forward", 512),
                                                      ("training", 224)}
    assert f"calibration {path}" in proc.stdout and "inference: oneDNN" in proc.stdout
    # cached: the next run measures nothing (and loads no TensorFlow)
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "already calibrated" in again.stderr
    assert f"calibration {path}" in again.stdout


def test_the_benchmark_prints_the_cpu_block(tmp_path, monkeypatch):
    from bench import harness, report
    fake_cpuinfo(monkeypatch, tmp_path, ZEN3)
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    machine = harness.machine_info()
    assert machine["cpu"] == "AMD EPYC 7R13 Processor"
    assert machine["features"] == ["avx2", "fma"]
    assert machine["tensorflow"] == choice.tensorflow_version()
    rows = {row["choice"]: row for row in machine["choices"]["inference"]}
    assert rows["oneDNN for inference"] == {"choice": "oneDNN for inference", "value": "off",
                                            "source": "rule: no avx512f"}
    assert rows["oneDNN for training"]["value"] == "on"
    assert rows["row block"] == {"choice": "row block", "value": "100",
                                 "source": "rule: measured fastest on AVX2 CPUs"}
    # what the workers ran: the plain tf variant's records
    results = [{"variant": "tf", "training": False, "onednn": False},
               {"variant": "tf-onednn", "training": False, "onednn": True},
               {"variant": "tf", "training": True, "onednn": True}]
    machine["onednn_workers"] = harness.onednn_in_workers(results)
    assert machine["onednn_workers"] == {"inference": False, "training": True}
    lines = report.format_cpu(machine)
    assert machine["kind"] == "AMD Zen 3"
    assert lines[0].startswith(f"CPU AMD EPYC 7R13 Processor (AMD Zen 3), {os.cpu_count()} cores, "
                               f"TensorFlow {machine['tensorflow']}; flags avx2 fma; oneDNN off "
                               "for inference, on for training; bfloat16 refused")
    assert "  oneDNN for inference        off         rule: no avx512f" in lines
    assert "  conv6/conv7 (training)      matmul      rule: measured fastest on AVX2 CPUs" in lines
    assert len(lines) == 1 + 2 + 3 * 2  # oneDNN once, the forms per task
    # no worker ran: the environment, else the choice
    del machine["onednn_workers"]
    assert "oneDNN off for inference, on for training" in report.format_cpu(machine)[0]
    machine["onednn_env"] = "1"
    assert "oneDNN on for inference, on for training" in report.format_cpu(machine)[0]
