"""Train FCN-8s from a config.

    python train.py --config config.json [--set section.key=value ...]

Reads the dataset with tf.data straight into the graph, checkpoints into
`train.log_dir` every `train.checkpoint_every` steps and at the end (with a
sidecar describing the model and the resolved config beside them), evaluates
on the validation split every `train.eval_every` steps and at the end, and
writes TensorBoard summaries there. Running the same command again resumes
from the newest checkpoint that fully reads (found by scanning the directory;
newer ones that do not read are named and skipped; when checkpoint files are
there but none reads, it stops rather than start over). Ctrl-C or SIGTERM
saves a checkpoint and exits; a second signal during that save is ignored. A
non-finite loss, a full disk or an unwritable file stops the run with one
line, keeping the last good checkpoint. A run that learns nothing (one class
predicted nearly everywhere, a mean IU below always predicting the most
frequent class, a loss that stopped falling) gets a one-line warning naming
the usual causes; with train.stop_on_collapse it saves and stops (exit 2).
One run at a time per log directory.
With train.precision bfloat16 (CPUs with bfloat16 units), the convolutions
and products run in bfloat16 through oneDNN; the weights stay float32.

With TF_CONFIG naming several tasks (fcn_graph.cluster.distributed), every task runs
this same command and they train synchronously: each on its shard of the
training files with train.batch_size images per step, over train.devices on
its machine; only the chief writes. A task that does not answer within
train.step_timeout seconds stops the others; running all tasks again resumes
from the chief's newest checkpoint.
"""

import argparse
import sys

from fcn_graph import cli
from fcn_graph.core.errors import UserError, run_cli
from fcn_graph.host import choice, tflog
from fcn_graph.training.config import load_config


def build_parser():
    parser = argparse.ArgumentParser(prog="train.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    return cli.add_config_args(parser, config_required=True)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.config is None:
        raise UserError("--config is required (e.g. python train.py --config config.json); "
                         "training never starts from the built-in defaults alone")
    config = load_config(args.config, args.overrides)
    # before TensorFlow loads: it reads TF_ENABLE_ONEDNN_OPTS once
    choice.apply_onednn("training", threads=config.train.threads,
                            require=config.train.precision == "bfloat16")
    tflog.load_tensorflow()
    from fcn_graph.training.loop import train

    train(config, exiting=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="fcn_graph.train"))
