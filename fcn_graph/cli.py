"""Command-line pieces shared by the commands: the arguments several commands
take (`--config`/`--set`, `--kernels`, `--tile`/`--memory-budget`,
`--calibration`, `--tta`) and the checks that turn them into values for the library.
Only the commands import this module."""

from fcn_graph.core.constants import KERNELS
from fcn_graph.core.ranges import MEMORY_BUDGET_RANGE
from fcn_graph.engines.int8_model import CALIBRATION_IMAGES, calibration_files
from fcn_graph.engines.tiling import DEFAULT_MEMORY_BUDGET_GB, check_memory_budget, parse_tile
from fcn_graph.engines.tta import MAX_SCALE, MIN_SCALE, parse_tta
from fcn_graph.host.choice import choose_engine


def add_kernels_arg(parser, default=None):
    """Add `--kernels auto|reference|cpu` to `parser`; with default None the
    config's model.kernels applies (auto without a config)."""
    parser.add_argument(
        "--kernels", choices=KERNELS, default=default,
        help="kernel set: reference (tf.nn.conv2d, tf.nn.conv2d_transpose), cpu (faster "
             "forms on CPUs) or auto (reference when TensorFlow sees a GPU, else cpu); "
             f"default {default or 'model.kernels of the config, else auto'}")


def add_config_args(parser, *, config_required=False):
    """Add `--config FILE` and repeatable `--set section.key=value` to `parser`.

    `config_required` only changes the help text: the command checks for
    `--config` itself, so that a missing one is a one-line error."""
    parser.add_argument(
        "--config", default=None, metavar="FILE",
        help="JSON config (comments allowed); its keys override the defaults"
             + ("; required, e.g. --config config.json" if config_required else ""),
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override one config key, e.g. --set train.batch_size=4 "
             "(value parsed as JSON where it parses, else taken as a string); repeatable",
    )
    return parser


def add_tile_args(parser):
    """Add --tile and --memory-budget to a command's parser."""
    parser.add_argument(
        "--tile", default="auto", metavar="auto|SIZE|off",
        help="tiled inference for large images: auto (default) tiles an image whose "
             "estimated activation memory exceeds --memory-budget; SIZE (a multiple of 32) "
             "tiles every image larger than SIZE x SIZE; off runs every image whole")
    parser.add_argument(
        "--memory-budget", type=MEMORY_BUDGET_RANGE, default=DEFAULT_MEMORY_BUDGET_GB,
        metavar="GB", help=f"activation memory allowed for one image with --tile auto "
                           f"({MEMORY_BUDGET_RANGE.describe()}, default "
                           f"{DEFAULT_MEMORY_BUDGET_GB:g})")


def tile_option(parser, args):
    """The parsed --tile of `args` ("auto", None or a size), errors through
    parser.error."""
    try:
        check_memory_budget(args.memory_budget)
        return parse_tile(args.tile)
    except ValueError as err:
        parser.error(str(err))


def add_calibration_arg(parser):
    """--calibration DIR, for --precision int8."""
    parser.add_argument("--calibration", default=None, metavar="DIR",
                        help="--precision int8: a folder of images like the ones to segment; "
                             f"the int8 model is calibrated on up to {CALIBRATION_IMAGES} of them")


def resolve_precision_args(parser, args):
    """Check --precision, --engine and --calibration together, and resolve
    --engine auto (`choice.choose_engine`). Returns (engine, the reason it
    was chosen, the calibration image paths for int8 or None)."""
    if args.precision == "int8":
        if args.engine == "tf":
            parser.error("--precision int8 runs on --engine onnxruntime only; drop --engine tf")
        if args.calibration is None:
            parser.error("--precision int8: needs --calibration DIR, a folder of images to "
                         "calibrate the int8 model on")
        engine, reason = choose_engine(args.engine, precision="int8")
        return engine, reason, calibration_files(args.calibration)
    if args.calibration is not None:
        parser.error(f"--calibration applies to --precision int8 only (found --precision "
                     f"{args.precision})")
    engine, reason = choose_engine(args.engine, precision=args.precision,
                                   xla=getattr(args, "xla", False))
    return engine, reason, None


def add_tta_arg(parser):
    """Add --tta to a command's parser."""
    parser.add_argument(
        "--tta", default="off", metavar="flip|scales=S,...",
        help="test-time augmentation: average the softmax scores of the image flipped "
             "(flip) and/or resized by each scale (scales=0.75,1,1.25; from "
             f"{MIN_SCALE:g} to {MAX_SCALE:g}), e.g. flip,scales=0.75,1,1.25 "
             "(default off)")


def tta_option(parser, args):
    """The parsed --tta of `args` (a `Tta` or None), errors through parser.error."""
    try:
        return parse_tta(args.tta)
    except ValueError as err:
        parser.error(str(err))

