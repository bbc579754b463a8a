"""Check a dataset, or convert it to the folder layout.

    python -m fcn_graph.dataset check --config config.json [--chart FILE.png]
    python -m fcn_graph.dataset convert --config config.json --out DIR

check reads every item of data.train_split and data.val_split once and reports
per class the pixel share and the number of images it appears in, the image
sizes, and every problem, naming the file: unreadable files, label values
outside 0..K-1 other than 255, image/label size mismatches, the same image
twice or in both splits, classes with no pixels, labelme files with no shapes.
It writes a class-frequency bar chart. Exit status: 0 clean, 1 warnings only,
2 errors.

convert writes both splits as images/, labels/<stem>.png (class ids),
classes.txt and <split>.txt, which data.kind folder (and any other tool) reads.
"""

import argparse
import sys

from fcn_graph import cli
from fcn_graph.core.errors import run_cli
from fcn_graph.training.config import SPLIT_KEYS, load_config

DEFAULT_CHART = "class_frequency.png"


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m fcn_graph.dataset", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="{check,convert}")
    check = commands.add_parser("check", help="read every item and report problems and "
                                              "class frequencies")
    cli.add_config_args(check, config_required=True)
    check.add_argument("--chart", default=DEFAULT_CHART, metavar="FILE.png",
                       help=f"class-frequency bar chart to write (default {DEFAULT_CHART} in "
                            "the current folder; a file check did not write is never "
                            "replaced)")
    check.add_argument("--quiet", action="store_true", help="no progress line")
    convert = commands.add_parser("convert", help="write the dataset in the folder layout")
    cli.add_config_args(convert, config_required=True)
    convert.add_argument("--out", required=True, metavar="DIR",
                         help="output folder: new, or one an earlier convert created "
                              "(it then resumes)")
    convert.add_argument("--quiet", action="store_true", help="no progress line")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.error("expected a command: check or convert")
    if not args.config:
        parser.error(f"{args.command}: --config is required, e.g. --config config.json")
    reads = [*SPLIT_KEYS, "data.train_split", "data.val_split", "model.num_classes"]
    config = load_config(args.config, args.overrides, reads=reads,
                         command=f"fcn_graph.dataset {args.command}")
    from fcn_graph.host import tflog

    tflog.load_tensorflow()
    if args.command == "convert":
        from fcn_graph.data.convert import convert

        written = convert(config, args.out, show_progress=not args.quiet)
        print(f"wrote {written} item(s) to {args.out} (data.kind folder, data.root "
              f"{args.out})")
        return 0
    from fcn_graph.data.check import check_dataset, format_report, write_chart

    report = check_dataset(config, show_progress=not args.quiet)
    for line in format_report(report):
        print(line)
    if write_chart(args.chart, report):
        print(f"chart: {args.chart}")
    return report.status


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="fcn_graph.dataset"))
