"""Run N training workers on this machine, as a cluster manager would.

    python -m fcn_graph.launch --workers 2 -- train.py --config config.json

Picks N free ports, starts N copies of the command, each with a TF_CONFIG
naming all N workers on --host and its own index (worker 0 is the chief), and
prefixes every line they print with their name ([worker 0] ...). A command
that ends in .py runs with this Python (with PYTHONUNBUFFERED=1 unless set).

When a worker fails (a non-zero status or a signal), the others get SIGTERM,
then SIGKILL after --grace seconds, and the whole group starts again on fresh
ports, up to --max-restarts times; training resumes from the newest checkpoint.
A worker that could not listen on its port (another program took it) makes
the group start again on fresh ports without counting as a restart.
Ctrl-C or SIGTERM sends SIGTERM to every worker (so the chief saves a
checkpoint), waits for them as long as they take and exits with 128 + the
signal number, never restarting; a second signal kills them at once.

Each worker runs in its own process group: when the launcher exits, on an
error too, no worker and no process a worker started in its group is left
running. On Linux, a launcher killed with SIGKILL takes its workers along.

Exit status: 0 when every worker exits 0; 1 when the restarts are used up;
2 for bad arguments; 130 or 143 after Ctrl-C or SIGTERM.

The workers' TensorFlow servers listen on every interface, whatever --host
is: TensorFlow's gRPC server binds 0.0.0.0:PORT and offers no other address.
To keep them from other machines, run the launcher in a network namespace of
its own (unshare -rn, then ip link set lo up) or close the ports with a
firewall.

For trying multi-worker training and for tests: on a cluster, the cluster
manager starts and restarts the tasks and sets TF_CONFIG itself.
"""

import argparse
import signal
import sys

from fcn_graph.core.errors import UserError, run_cli
from fcn_graph.core.ranges import Range

PROG = "fcn_graph.launch"


_positive_int = Range(1, 256, integer=True)                    # --workers
_count = Range(0, 1000, integer=True)                          # --max-restarts
_seconds = Range(0, 3600, low_open=True, unit="seconds")       # --grace


class _Parser(argparse.ArgumentParser):
    """Reports a bad argument as a UserError: one line, exit status 2."""

    def error(self, message):
        raise UserError(message)


def build_parser():
    parser = _Parser(prog="python -m fcn_graph.launch", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter,
                     usage="python -m fcn_graph.launch --workers N [options] -- COMMAND [ARG ...]")
    parser.add_argument("--workers", type=_positive_int, required=True, metavar="N",
                        help="how many worker processes to start")
    parser.add_argument("--max-restarts", type=_count, default=3, metavar="K",
                        help="how many times the group starts again after a failure "
                             "(default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="the address of this machine the workers name in TF_CONFIG "
                             "(default: %(default)s); their servers listen on every "
                             "interface whatever it is")
    parser.add_argument("--grace", type=_seconds, default=10.0, metavar="SECONDS",
                        help="after a failure, how long the other workers get to exit after "
                             "SIGTERM before SIGKILL (default: %(default)g)")
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND",
                        help="the command each worker runs, after '--', e.g. "
                             "train.py --config config.json")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    from fcn_graph.cluster import procgroup

    command = procgroup.resolve_command(command)
    procgroup.check_host(args.host)
    launcher = procgroup.Launcher(command, args.workers, host=args.host,
                                  max_restarts=args.max_restarts, grace=args.grace, prog=PROG)
    previous = {}

    def handler(signum, frame):
        launcher.request_stop(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, handler)
    try:
        status, message = launcher.run()
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
    if status == 1:
        print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    else:
        launcher.say(message)
    return status


if __name__ == "__main__":
    sys.exit(run_cli(main, prog=PROG))
