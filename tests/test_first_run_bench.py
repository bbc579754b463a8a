"""bench/first_run.py: the times it reads off a training's output, on a fake
training that prints what train.py prints."""

import argparse
import io
import sys

import pytest

from bench import first_run

FAKE_TRAINING = r"""
import sys
print("warning: model.vgg_mat is null", file=sys.stderr)
print("training on 800 shapes images (4 classes), validating on 100; global batch 8")
for step, iou in ((100, "0.4012"), (200, "0.9000"), (300, "0.8999"), (400, "0.9371")):
    print(f"step {step}: validation mean IU {iou}, pixel accuracy 0.9 (100 images, 1.5 s)")
print("step 400: validation mean IU 0.9371 (100 images); checkpoint runs/x/model.ckpt-400")
sys.exit(int(sys.argv[1]))
"""


class StepClock:
    """A clock that moves one second each time it is read."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        self.now += 1.0
        return self.now


def test_watch_run_times_the_first_validation_over_each_threshold(tmp_path):
    record = first_run.watch_run([sys.executable, "-c", FAKE_TRAINING, "0"], str(tmp_path),
                                 (0.9, 0.93), clock=StepClock(), echo=io.StringIO())
    # reads: start 1, then one per line: warning 2, training 3, validations 4..7
    assert record["training_started_s"] == 2.0
    assert [v["step"] for v in record["validations"]] == [100, 200, 300, 400]
    assert [v["mean_iou"] for v in record["validations"]] == [0.4012, 0.9, 0.8999, 0.9371]
    assert record["reached_s"] == {"0.90": 4.0, "0.93": 6.0}
    assert record["returncode"] == 0 and record["total_s"] == 8.0
    assert all(v["validation_s"] == 1.5 for v in record["validations"])


def test_watch_run_keeps_a_failing_exit_status(tmp_path):
    record = first_run.watch_run([sys.executable, "-c", FAKE_TRAINING, "3"], str(tmp_path),
                                 (0.95,), clock=StepClock(), echo=io.StringIO())
    assert record["returncode"] == 3 and record["reached_s"] == {}


def _round(reached, total, last):
    return {"reached_s": reached, "total_s": total,
            "validations": [{"mean_iou": last, "validation_s": 2.0}]}


def test_summary_medians_and_a_threshold_one_round_missed():
    rounds = [_round({"0.90": 100.0, "0.93": 150.0}, 170.0, 0.94),
              _round({"0.90": 120.0}, 190.0, 0.92),
              _round({"0.90": 110.0, "0.93": 160.0}, 180.0, 0.935)]
    summary = first_run.summarise(rounds, (0.9, 0.93))
    assert summary["to_0.90_s"] == 110.0
    assert summary["to_0.93_s"] is None  # one round never reached it
    assert summary["total_s"] == 180.0 and summary["final_mean_iou"] == 0.935
    assert summary["validation_s"] == 2.0


@pytest.mark.parametrize("text", ["nan", "1.5", "-0.1", "0.9,inf", ""])
def test_bad_thresholds_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError):
        first_run.parse_thresholds(text)


def test_thresholds_are_sorted():
    assert first_run.parse_thresholds("0.93,0.9") == (0.9, 0.93)


def test_a_missing_config_is_one_line(tmp_path, capsys):
    from fcn_graph.core.errors import run_cli
    code = run_cli(first_run.main, ["--config", str(tmp_path / "none.json")],
                   prog="bench/first_run.py")
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--config" in err and "\n" not in err


def test_an_out_file_it_did_not_write_is_refused_before_any_run(tmp_path, capsys, monkeypatch):
    from fcn_graph.core.errors import run_cli
    config, mine = tmp_path / "config.json", tmp_path / "mine.json"
    config.write_text("{}")
    mine.write_text('{"kept": true}')
    monkeypatch.setattr(first_run, "one_round", lambda *a: pytest.fail("a run started"))
    code = run_cli(first_run.main, ["--config", str(config), "--out", str(mine)],
                   prog="bench/first_run.py")
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--out" in err and "\n" not in err
    assert mine.read_text() == '{"kept": true}'
