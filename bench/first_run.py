"""The README's first run, timed: `python train.py --config config.json` from
an empty folder, dataset generation included, as a new user runs it.

    python bench/first_run.py                      # the default config, once
    python bench/first_run.py --rounds 3           # three fresh runs: medians
    python bench/first_run.py --set train.eval_every=100

Each round copies the checkout's config.json into a new empty folder and runs
the checkout's train.py there in its own process (so data/shapes is generated
afresh and runs/ starts empty). It follows the process's output as it comes
and notes, from the start of the process: when training began (the "training
on" line), each validation's mean IU, the time of the first validation at or
above each threshold (--thresholds, default 0.90 and 0.93), and the end. A
threshold is reached at a validation, so its time depends on the validation
schedule (train.eval_every): with `--set train.eval_every=N`, more validations
show it more finely and cost their own time, which the report gives too.

The report names the CPU (lscpu's model name and the flags that decide the
engines' choices) and the load average before and after each round; it goes to
stdout and, with every figure, to bench/results/first-run-<UTC time>.json (or
--out; a file there is replaced only when fcn_graph wrote it and nobody changed it
since), written atomically.
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

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(HERE)
sys.path.insert(0, CHECKOUT)  # bench and fcn_graph without installing them

from bench import harness  # noqa: E402
from fcn_graph.core.errors import UserError, run_cli  # noqa: E402
from fcn_graph.core.ranges import Range  # noqa: E402

ROUNDS_RANGE = Range(1, 20, integer=True)
THRESHOLD_RANGE = Range(0, 1, low_open=True)  # a mean IU
DEFAULT_THRESHOLDS = (0.90, 0.93)
VALIDATION = re.compile(r"^step (\d+): validation mean IU ([0-9.]+|n/a), .*\((\d+) images, "
                        r"([0-9.]+) s\)")
TRAINING_STARTS = "training on "


def parse_thresholds(text):
    """"0.9,0.93" -> (0.9, 0.93), each checked by THRESHOLD_RANGE."""
    return tuple(sorted(THRESHOLD_RANGE(part) for part in text.split(",")))


def build_parser():
    parser = argparse.ArgumentParser(prog="bench/first_run.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=ROUNDS_RANGE, default=1,
                        help="fresh runs, one after another (default 1): medians")
    parser.add_argument("--thresholds", type=parse_thresholds, default=DEFAULT_THRESHOLDS,
                        help="mean IU thresholds to time, comma-separated (default 0.90,0.93)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE", help="passed to train.py")
    parser.add_argument("--config", default=os.path.join(CHECKOUT, "config.json"),
                        help="the config to copy (default: the checkout's config.json)")
    parser.add_argument("--work", default=None,
                        help="parent of the fresh folders (default: a temporary folder)")
    parser.add_argument("--out", default=None, help="the JSON report's path")
    return parser


def watch_run(command, cwd, thresholds, *, clock=time.monotonic, echo=sys.stderr):
    """Run `command` in `cwd`, following its output line by line; returns a
    dict of the times (seconds from the start) and validations seen."""
    start = clock()
    record = {"training_started_s": None, "validations": [], "reached_s": {}}
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, errors="replace")
    for line in process.stdout:
        now = clock() - start
        echo.write(line)
        if line.startswith(TRAINING_STARTS) and record["training_started_s"] is None:
            record["training_started_s"] = round(now, 2)
        match = VALIDATION.match(line)
        if match and match.group(2) != "n/a":
            mean_iou = float(match.group(2))
            record["validations"].append({"step": int(match.group(1)), "mean_iou": mean_iou,
                                          "at_s": round(now, 2),
                                          "validation_s": float(match.group(4))})
            for threshold in thresholds:
                if mean_iou >= threshold:
                    record["reached_s"].setdefault(f"{threshold:.2f}", round(now, 2))
    record["returncode"] = process.wait()
    record["total_s"] = round(clock() - start, 2)
    return record


def one_round(config, overrides, thresholds, parent):
    """One fresh run of train.py on a copy of `config` in a new folder of `parent`."""
    folder = tempfile.mkdtemp(prefix="first-run-", dir=parent)
    try:
        shutil.copyfile(config, os.path.join(folder, "config.json"))
        command = [sys.executable, os.path.join(CHECKOUT, "train.py"), "--config",
                   "config.json", *[arg for o in overrides for arg in ("--set", o)]]
        load_before = os.getloadavg()[0]
        record = watch_run(command, folder, thresholds)
        record["load_before"], record["load_after"] = load_before, os.getloadavg()[0]
        return record
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def summarise(rounds, thresholds):
    """Medians over the rounds: the time to each threshold (None where a round
    missed it), the total and the final mean IU."""
    def median(values, digits=2):
        return None if any(v is None for v in values) else round(statistics.median(values),
                                                                 digits)

    summary = {f"to_{t:.2f}_s": median([r["reached_s"].get(f"{t:.2f}") for r in rounds])
               for t in thresholds}
    summary["total_s"] = median([r["total_s"] for r in rounds])
    summary["final_mean_iou"] = median([r["validations"][-1]["mean_iou"] if r["validations"]
                                        else None for r in rounds], 4)
    summary["validation_s"] = median([sum(v["validation_s"] for v in r["validations"])
                                      for r in rounds])
    return summary


def format_report(report):
    machine = report["machine"]
    lines = [f"CPU {machine['cpu'] or 'unknown'} ({machine['kind'] or 'kind unknown'}), "
             f"{machine['cores']} cores; flags "
             f"{' '.join(machine['features']) or 'none of note'}",
             f"config {report['config']} {' '.join(report['overrides'])}".rstrip()]
    for i, r in enumerate(report["rounds"], 1):
        reached = ", ".join(f"{t} at {s:.0f} s" for t, s in r["reached_s"].items()) or "none"
        spent = sum(v["validation_s"] for v in r["validations"])
        lines.append(f"round {i}: exit {r['returncode']}, training from "
                     f"{r['training_started_s']} s, {len(r['validations'])} validations "
                     f"({spent:.1f} s), thresholds {reached}, end {r['total_s']:.0f} s, "
                     f"load {r['load_before']:.1f} -> {r['load_after']:.1f}")
    summary = report["summary"]
    for key, value in summary.items():
        lines.append(f"{key:<16} {'not reached' if value is None else value}")
    return "\n".join(lines)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if not os.path.isfile(args.config):
        raise UserError(f"--config: {args.config} is not a file")
    out = harness.report_path(args.out, "first-run")  # checked before the runs
    try:
        parent = args.work or tempfile.mkdtemp(prefix="fcn-first-run-")
        os.makedirs(parent, exist_ok=True)
    except OSError as err:
        raise UserError(f"--work {args.work}: cannot make a folder there ({err.strerror})") \
            from None
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    rounds = [one_round(args.config, args.overrides, args.thresholds, parent)
              for _ in range(args.rounds)]
    if args.work is None:
        shutil.rmtree(parent, ignore_errors=True)
    report = {"started_utc": started, "machine": harness.machine_info(),
              "config": os.path.relpath(args.config, CHECKOUT), "overrides": args.overrides,
              "rounds": rounds, "summary": summarise(rounds, args.thresholds)}
    print(format_report(report))
    harness.write_report(out, report)
    return 0 if all(r["returncode"] == 0 for r in rounds) else 1


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="bench/first_run.py"))
