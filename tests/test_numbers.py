"""Every number a user gives, on the command line or in the config, is finite
and inside its stated range before anything runs: one line naming the flag or
key, exit status 2."""

import argparse
import json
import os

import pytest

from bench import (
    allreduce_sim,
    cold_start,
    first_run,
    optimizer_update,
    precision,
    side_by_side,
    suite,
    tiled_memory,
)
from fcn_graph import bench as bench_command
from fcn_graph import calibrate, evaluate, export, infer, launch, port
from fcn_graph import train as train_command
from fcn_graph.core.errors import UserError, run_cli
from fcn_graph.core.ranges import Range, max_threads
from fcn_graph.training import config

# Values outside every range: not numbers, not finite, too large for a float,
# negative, and finite but far too large.
BAD = ("nan", "inf", "-inf", "1e400", "-5", "1e30")
# Integers of more digits than int() converts.
TOO_LONG = "9" * 5000

# (command, main, arguments before the flag, the flag, the other values of
# the flag (--mean R G B: the bad value is R), whether 0 is inside its range)
INFER = (infer.main, ["in.png", "--checkpoint", "ck"])
EVALUATE = (evaluate.main, [])
HARNESS = (bench_command.main, [])
FLAGS = [
    ("infer", *INFER, "--mean", ["0", "0"], True),
    ("infer", *INFER, "--batch", [], False),
    ("infer", *INFER, "--alpha", [], True),
    ("infer", *INFER, "--threads", [], False),
    ("infer", *INFER, "--memory-budget", [], False),
    ("infer", *INFER, "--tile", [], False),
    ("evaluate", *EVALUATE, "--max-images", [], False),
    ("evaluate", *EVALUATE, "--memory-budget", [], False),
    ("evaluate", *EVALUATE, "--tile", [], False),
    ("export", export.main, ["--checkpoint", "ck", "--format", "onnx", "--out", "x.onnx"],
     "--opset", [], False),
    ("port mat2ckpt", port.main, ["mat2ckpt", "x.mat", "--out", "o", "--num-classes", "3"],
     "--num-classes", [], False),
    ("port mat2ckpt", port.main, ["mat2ckpt", "x.mat", "--out", "o", "--num-classes", "3"],
     "--fc-width", [], False),
    ("port keras-h5", port.main, ["keras-h5", "x.h5", "--out", "o", "--num-classes", "3"],
     "--seed", [], True),
    ("port legacy", port.main, ["legacy", "ck", "--out", "o"], "--mean", ["0", "0"], True),
    ("calibrate", calibrate.main, [], "--threads", [], False),
    ("calibrate", calibrate.main, [], "--scale", [], False),
    ("launch", launch.main, ["--workers", "1"], "--workers", [], False),
    ("launch", launch.main, ["--workers", "1"], "--max-restarts", [], True),
    ("launch", launch.main, ["--workers", "1"], "--grace", [], False),
    ("bench", *HARNESS, "--repeats", [], False),
    ("bench", *HARNESS, "--warmup", [], True),
    ("bench", *HARNESS, "--min-seconds", [], True),
    ("bench", *HARNESS, "--threads", [], False),
    ("bench", *HARNESS, "--width-multiplier", [], False),
    ("bench", *HARNESS, "--fc-width", [], False),
    ("bench", *HARNESS, "--num-classes", [], False),
    ("bench", *HARNESS, "--sgemm-size", [], False),
    ("bench", *HARNESS, "--sgemm-repeats", [], False),
    ("bench/allreduce_sim", allreduce_sim.main, [], "--batch", [], False),
    ("bench/allreduce_sim", allreduce_sim.main, [], "--size", [], False),
    ("bench/allreduce_sim", allreduce_sim.main, [], "--num-classes", [], False),
    ("bench/allreduce_sim", allreduce_sim.main, [], "--width-multiplier", [], False),
    ("bench/allreduce_sim", allreduce_sim.main, [], "--fc-width", [], False),
    ("bench/allreduce_sim", allreduce_sim.main, [], "--repeats", [], False),
    ("bench/allreduce_sim", allreduce_sim.main, [], "--threads", [], False),
    ("bench/allreduce_sim", allreduce_sim.main, [], "--latency-us", [], True),
    ("bench/allreduce_sim", allreduce_sim.main, [], "--bucket-bytes", [], False),
    ("bench/allreduce_sim", allreduce_sim.main, [], "--gbit", [], False),
    ("bench/cold_start", cold_start.main, [], "--images", [], True),
    ("bench/cold_start", cold_start.main, [], "--network-calls", [], False),
    ("bench/cold_start", cold_start.main, [], "--rounds", [], False),
    ("bench/cold_start", cold_start.main, [], "--width-multiplier", [], False),
    ("bench/cold_start", cold_start.main, [], "--fc-width", [], False),
    ("bench/cold_start", cold_start.main, [], "--num-classes", [], False),
    ("bench/first_run", first_run.main, [], "--rounds", [], False),
    ("bench/first_run", first_run.main, [], "--thresholds", [], False),
    ("bench/optimizer_update", optimizer_update.main, [], "--num-classes", [], False),
    ("bench/optimizer_update", optimizer_update.main, [], "--width-multiplier", [], False),
    ("bench/optimizer_update", optimizer_update.main, [], "--fc-width", [], False),
    ("bench/optimizer_update", optimizer_update.main, [], "--repeats", [], False),
    ("bench/optimizer_update", optimizer_update.main, [], "--step-gflop", [], False),
    ("bench/optimizer_update", optimizer_update.main, [], "--sgemm", [], False),
    ("bench/precision", precision.main, [], "--rounds", [], False),
    ("bench/precision", precision.main, [], "--cases", [], False),
    ("bench/side_by_side", side_by_side.main, ["tf"], "--rounds", [], False),
    ("bench/side_by_side", side_by_side.main, ["tf"], "--cases", [], False),
    ("bench/suite", suite.main, [], "--rounds", [], False),
    ("bench/tiled_memory", tiled_memory.main, [], "--height", [], False),
    ("bench/tiled_memory", tiled_memory.main, [], "--width", [], False),
    ("bench/tiled_memory", tiled_memory.main, [], "--seed", [], True),
    ("bench/tiled_memory", tiled_memory.main, [], "--memory-budget", [], False),
    ("bench/tiled_memory", tiled_memory.main, [], "--max-tiles", [], False),
]


def _flag_cases():
    for command, main, before, flag, after, zero_ok in FLAGS:
        for value in BAD + (() if zero_ok else ("0",)) + (TOO_LONG,):
            if after and value == "-inf":
                continue      # argparse reads -inf among several values as an option
            shown = value if len(value) < 10 else f"{value[:3]}...({len(value)} chars)"
            yield pytest.param(main, before, flag, value, after, id=f"{command} {flag} {shown}")


def _run(main, argv):
    try:
        return run_cli(main, argv)
    except SystemExit as stop:
        return stop.code


@pytest.mark.parametrize("main, before, flag, value, after", _flag_cases())
def test_a_bad_number_is_one_line_naming_the_flag(main, before, flag, value, after, capsys,
                                                  tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    given = [flag, value, *after] if after else [f"{flag}={value}"]
    tail = ["--", "true"] if main is launch.main else []
    assert _run(main, [*before, *given, *tail]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert flag in lines[-1] and "expected" in lines[-1] and "Traceback" not in lines[-1]
    assert "found" in lines[-1] and value[:3] in lines[-1]
    assert os.listdir(tmp_path) == []         # nothing made before the check


@pytest.mark.parametrize("case", ["224x1025", "8193x1", "224x0", "224x" + TOO_LONG])
def test_bench_cases_have_a_ceiling(case, capsys):
    with pytest.raises(SystemExit) as stop:
        side_by_side.main(["tf", "--cases", f"224x1,{case}"])
    assert stop.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--cases: expected SIZExBATCH like 224x1 (SIZE 1..8192, BATCH 1..1024)" in line
    assert len(line) < 200


def test_threads_have_a_ceiling_of_four_per_core(capsys):
    parser = infer.build_parser()
    ceiling = max_threads()
    assert ceiling == 4 * (os.cpu_count() or 1)
    assert parser.parse_args(["x.png", "--threads", str(ceiling)]).threads == ceiling
    with pytest.raises(SystemExit) as stop:
        parser.parse_args(["x.png", "--threads", str(ceiling + 1)])
    assert stop.value.code == 2
    assert (f"argument --threads: expected an integer in 1..{ceiling}, found '{ceiling + 1}'"
            in capsys.readouterr().err)


@pytest.mark.parametrize("flag, value", [("--mean", "255"), ("--alpha", "0"), ("--alpha", "1"),
                                         ("--batch", "1024"), ("--memory-budget", "0.5")])
def test_the_ends_of_a_range_are_accepted(flag, value):
    argv = ["x.png", flag, value] + (["0", "0"] if flag == "--mean" else [])
    infer.build_parser().parse_args(argv)


# ---------------------------------------------------------------- config keys

def _key_cases():
    for dotted in [*config.RANGES, "train.threads"]:
        numbers = config.RANGES.get(dotted) or Range(1, max_threads(), integer=True)
        values = ["NaN", "Infinity", "-Infinity", "1e400", "-5", "1e30", "1" + "0" * 400]
        if not numbers.contains(0):
            values.append("0")
        for value in values:
            if dotted == "train.scale_range":
                value = f"[{value}, 1]"
            shown = value if len(value) < 12 else f"{value[:4]}...({len(value)} chars)"
            yield pytest.param(dotted, value, id=f"{dotted}={shown}")


@pytest.mark.parametrize("dotted, value", _key_cases())
def test_a_bad_number_in_a_key_is_one_line_naming_it(dotted, value):
    with pytest.raises(UserError) as raised:
        config.load_config(None, [f"{dotted}={value}"])
    message = str(raised.value)
    assert message.startswith(f"--set: {dotted}: expected ") and "found" in message
    assert "\n" not in message


@pytest.mark.parametrize("dotted", [*config.RANGES, "train.threads"])
def test_every_numeric_key_has_a_range(dotted):
    section, key = dotted.split(".")
    assert hasattr(getattr(config.Config(), section), key)


def test_every_numeric_key_is_in_the_table():
    kinds = (int, float, config.Optional[int], config.Optional[float], config.List[float])
    numeric = {f"{section}.{name}" for section, make in config.SECTIONS.items()
               for name, hint in config.typing.get_type_hints(type(make())).items()
               if hint in kinds}
    assert numeric - {"train.threads"} == set(config.RANGES)


def test_the_defaults_lie_inside_their_ranges():
    defaults = config.load_config()
    for dotted, numbers in config.RANGES.items():
        section, key = dotted.split(".")
        value = getattr(getattr(defaults, section), key)
        for item in value if isinstance(value, list) else [value]:
            assert item is None or numbers.contains(item), dotted


def test_infinity_from_a_json_file_is_refused_before_the_log_dir_is_made(tmp_path, capsys):
    path = tmp_path / "config.json"
    log_dir = tmp_path / "run"
    path.write_text('{"train": {"learning_rate": 1e400, "log_dir": %s}}'
                    % json.dumps(str(log_dir)))
    assert run_cli(train_command.main, ["--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"fcn_graph: error: {path}: train.learning_rate: expected a number in "
                   "(0, 10], found inf (not a finite number)")
    assert not log_dir.exists()


def test_a_huge_width_is_one_line_not_an_overflow(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text("{}")
    argv = ["--config", str(path), "--set", "model.vgg_width=1e400",
            "--set", f"train.log_dir={tmp_path / 'run'}"]
    assert run_cli(train_command.main, argv) == 2
    assert "model.vgg_width: expected a number in (0, 8], found inf" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_float_key_given_an_integer_beyond_float_is_one_line():
    with pytest.raises(UserError, match=r"^--set: train.learning_rate: expected a finite "
                                        r"number, found an integer of 401 digits$"):
        config.load_config(None, ["train.learning_rate=1" + "0" * 400])


# ---------------------------------------------------------------- Range itself

@pytest.mark.parametrize("numbers, inside, outside", [
    (Range(0, 1), [0, 0.5, 1], [-1e-9, 1.0000001, float("nan"), float("inf")]),
    (Range(0, 1, low_open=True, high_open=True), [1e-300, 0.999], [0, 1]),
    (Range(1, 3, integer=True), [1, 2, 3], [0, 4, 2.5, 10**400]),
    (Range(0, 255), [255, 0.0], [255.5, -0.001, 10**400]),
])
def test_range_contains_exactly_its_interval(numbers, inside, outside):
    assert all(numbers.contains(v) for v in inside)
    assert not any(numbers.contains(v) for v in outside)


@pytest.mark.parametrize("numbers, text", [
    (Range(1, 1024, integer=True), "an integer in 1..1024"),
    (Range(0, 1, low_open=True), "a number in (0, 1]"),
    (Range(0, 3600, low_open=True, unit="seconds"), "a number of seconds in (0, 3600]"),
    (Range(0, 1, high_open=True), "a number in [0, 1)"),
])
def test_range_states_itself(numbers, text):
    assert numbers.describe() == text


def test_range_as_argparse_type_parses_or_explains():
    numbers = Range(0, 255)
    assert numbers("12.5") == 12.5
    for text, found in (("nan", "'nan' (not a finite number)"), ("300", "'300'"),
                        ("red", "'red'")):
        with pytest.raises(argparse.ArgumentTypeError) as raised:
            numbers(text)
        assert str(raised.value) == f"expected a number in [0, 255], found {found}"
