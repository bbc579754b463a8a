"""A group of local worker processes started with TF_CONFIG, supervised as one.

`Launcher(argv, workers).run()` picks free ports, starts `workers` copies of
`argv`, each with a `TF_CONFIG` naming the whole cluster and its own index,
copies their output line by line with a `[worker i] ` prefix, and waits. When a
task fails (non-zero status or a signal) it stops the others (SIGTERM, then
SIGKILL after `grace` seconds) and starts the whole group again on fresh ports,
up to `max_restarts` times. `request_stop(signum)` (from a signal handler)
forwards SIGTERM to every task and ends the run once they have exited; a second
call kills them at once.

No process outlives the launcher: each task leads its own session and process
group, so that signals reach its children too; a task's group is killed before
the task is reaped, so that the group id cannot have been reused; every exit
path (an exception included) kills and reaps what is still running; on Linux
each task also gets SIGKILL from the kernel when the launcher dies
(PR_SET_PDEATHSIG).

This module never imports TensorFlow.
"""

import ctypes
import ctypes.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

from fcn_graph.core.errors import UserError

# How often the supervisor looks at its tasks and at received signals, in seconds.
POLL_SECONDS = 0.05
# Output lines longer than this are copied in pieces, each with the prefix.
MAX_LINE_BYTES = 65536
# Starts of a group that failed because a worker could not listen on its port
# (another program took it between the pick and the bind): retried on fresh
# ports without counting as restarts, at most this many times in a row.
PORT_RETRIES = 5
# What TensorFlow's gRPC server (and a plain bind) print when the port is taken.
BIND_FAILURE = re.compile(rb"could not start grpc server|failed to add port to server|"
                          rb"address already in use", re.IGNORECASE)
# How long the output of a finished group may take to drain, in seconds.
DRAIN_SECONDS = 5.0

_PR_SET_PDEATHSIG = 1


def signal_name(signum):
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def describe_status(returncode):
    """'exited with status 3' or 'was killed by SIGKILL' for a Popen returncode."""
    if returncode < 0:
        return f"was killed by {signal_name(-returncode)}"
    return f"exited with status {returncode}"


def _address(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _family(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def check_host(host):
    """UserError unless `host` is an address of this machine that a socket can bind."""
    try:
        with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
    except (OSError, UnicodeError) as err:
        raise UserError(f"--host {host}: expected an address of this machine such as "
                        f"127.0.0.1, found one that cannot be bound ({err})") from None


def free_ports(count, host="127.0.0.1"):
    """`count` distinct TCP ports free on every interface of `host`'s family.

    The ports are bound together (so they differ), then released for the
    workers to bind: TensorFlow's server listens on all interfaces, so the pick
    binds the wildcard address rather than `host` alone. Another program can
    take a port before the worker binds it; the launcher sees that worker fail
    and starts the group again on fresh ports.
    """
    family = _family(host)
    wildcard = "::" if family == socket.AF_INET6 else "0.0.0.0"
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((wildcard, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def tf_config(addresses, index):
    """The TF_CONFIG value of worker `index` in a cluster of `addresses`."""
    return json.dumps({"cluster": {"worker": list(addresses)},
                       "task": {"type": "worker", "index": index}})


def resolve_command(command):
    """The argv that runs `command`: a `.py` file with this Python, anything else
    as given; UserError when the file or program is not there."""
    if not command:
        raise UserError("no command given; expected one after '--', e.g. "
                        "-- train.py --config config.json")
    program = command[0]
    if program.endswith(".py"):
        if not os.path.isfile(program):
            found = "a directory" if os.path.isdir(program) else "nothing"
            raise UserError(f"{program}: expected a Python script to run, found {found}")
        return [sys.executable, *command]
    if os.sep in program:
        if not (os.path.isfile(program) and os.access(program, os.X_OK)):
            raise UserError(f"{program}: expected an executable file, found "
                            f"{'one that is not executable' if os.path.isfile(program) else 'nothing'}")
        return list(command)
    if shutil.which(program) is None:
        raise UserError(f"{program}: command not found on PATH")
    return list(command)


def _load_prctl():
    """libc's prctl on Linux, else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl
    except (OSError, AttributeError):
        return None


def _child_setup(prctl, parent_pid):
    """The preexec_fn of a task: SIGKILL when the launcher dies (Linux)."""
    def setup():
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != parent_pid:  # the launcher died before prctl took effect
                os._exit(1)
    return setup


class Output:
    """Writes whole lines to binary streams, one writer at a time.

    A stream that fails (a closed pipe) is dropped: the tasks' pipes are still
    drained, so that no task blocks on a full pipe.
    """

    def __init__(self, out, err):
        self.streams = {"out": out, "err": err}
        self.lock = threading.Lock()

    def write(self, which, data):
        with self.lock:
            stream = self.streams.get(which)
            if stream is None:
                return
            try:
                stream.write(data)
                stream.flush()
            except (OSError, ValueError):
                self.streams[which] = None


class Task:
    """One worker process: its Popen, its output pumps and its exit status."""

    def __init__(self, index, proc, output):
        self.index = index
        self.name = f"worker {index}"
        self.proc = proc
        self.returncode = None
        self.bind_failed = False
        prefix = f"[{self.name}] ".encode()
        self.pumps = [threading.Thread(target=self._pump, args=(pipe, which, prefix, output),
                                       daemon=True)
                      for pipe, which in ((proc.stdout, "out"), (proc.stderr, "err"))]
        for pump in self.pumps:
            pump.start()

    def _pump(self, pipe, which, prefix, output):
        with pipe:
            while True:
                try:
                    line = pipe.readline(MAX_LINE_BYTES)
                except (OSError, ValueError):
                    return
                if not line:
                    return
                if not line.endswith(b"\n"):
                    line += b"\n"
                if BIND_FAILURE.search(line):
                    self.bind_failed = True
                output.write(which, prefix + line)

    @property
    def running(self):
        return self.returncode is None

    def exited(self):
        """Whether the process has exited, without reaping it."""
        try:
            info = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None

    def signal_group(self, signum):
        """Send `signum` to the task's process group (the task and its children)."""
        if self.running:
            try:
                os.killpg(self.proc.pid, signum)
            except (ProcessLookupError, PermissionError):
                pass

    def reap(self):
        """Kill what is left of the group of an exited task, then reap the task."""
        self.signal_group(signal.SIGKILL)
        self.returncode = self.proc.wait()

    def drain(self, deadline):
        for pump in self.pumps:
            pump.join(max(0.0, deadline - time.monotonic()))


class GroupResult:
    """How one start of the group ended: `failed` (the first task that failed) or
    `signum` (stopped by a signal to the launcher) or neither (all exited 0)."""

    def __init__(self, failed=None, signum=None):
        self.failed = failed
        self.signum = signum


class Launcher:
    """Starts and supervises the group; see the module docstring.

    `say(message)` receives the launcher's own progress lines; `out` and `err`
    are binary streams for the tasks' prefixed stdout and stderr; `env` is the
    environment the tasks get (default os.environ) with TF_CONFIG set per task;
    `pick_ports(count, host)` picks the ports.
    """

    def __init__(self, argv, workers, *, host="127.0.0.1", max_restarts=3, grace=10.0,
                 out=None, err=None, say=None, env=None, pick_ports=free_ports,
                 prog="fcn_graph.launch"):
        self.argv = list(argv)
        self.workers = workers
        self.host = host
        self.max_restarts = max_restarts
        self.grace = grace
        self.output = Output(out if out is not None else sys.stdout.buffer,
                             err if err is not None else sys.stderr.buffer)
        self.prog = prog
        self._say = say
        self.env = dict(os.environ if env is None else env)
        self.pick_ports = pick_ports
        self.signals = []
        self.restarts = 0
        self.prctl = _load_prctl()

    def say(self, message):
        if self._say is not None:
            self._say(message)
        else:
            self.output.write("err", f"{self.prog}: {message}\n".encode())

    def request_stop(self, signum):
        """Record a signal to the launcher (safe to call from a signal handler)."""
        self.signals.append(signum)

    def run(self):
        """Run the group to the end: (exit status, final message)."""
        port_retries = 0
        while True:
            result = self._run_group()
            if result.signum is not None:
                return 128 + result.signum, (f"stopped by {signal_name(result.signum)}; "
                                             f"all workers have exited")
            if result.failed is None:
                return 0, f"all {self.workers} workers finished"
            task = result.failed
            how = f"{task.name} {describe_status(task.returncode)}"
            if task.bind_failed and port_retries < PORT_RETRIES:
                port_retries += 1
                self.say(f"{how}: it could not listen on its port (another program took it "
                         f"after it was picked); starting the group again on fresh ports "
                         f"(port retry {port_retries} of {PORT_RETRIES}, not a restart)")
                continue
            port_retries = 0
            if self.restarts >= self.max_restarts:
                plural = "" if self.max_restarts == 1 else "s"
                return 1, f"{how}; gave up after {self.max_restarts} restart{plural}"
            self.restarts += 1
            self.say(f"restarting the group on fresh ports (restart {self.restarts} of "
                     f"{self.max_restarts})")

    def _start(self, index, addresses):
        env = dict(self.env, TF_CONFIG=tf_config(addresses, index))
        if self.argv[0] == sys.executable:
            env.setdefault("PYTHONUNBUFFERED", "1")  # each print reaches the log at once
        try:
            proc = subprocess.Popen(self.argv, env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    start_new_session=True,
                                    preexec_fn=_child_setup(self.prctl, os.getpid()))
        except OSError as err:
            raise UserError(f"{self.argv[0]}: cannot start it: {err.strerror or err}") from None
        return Task(index, proc, self.output)

    def _run_group(self):
        if self.signals:  # a signal between two starts of the group
            return GroupResult(signum=self.signals[0])
        ports = self.pick_ports(self.workers, self.host)
        addresses = [_address(self.host, port) for port in ports]
        tasks = []
        try:
            for index in range(self.workers):
                if self.signals:
                    break
                tasks.append(self._start(index, addresses))
            pids = ", ".join(str(task.proc.pid) for task in tasks)
            self.say(f"started {len(tasks)} worker(s) on {', '.join(addresses)} (pids {pids})")
            return self._supervise(tasks)
        finally:
            for task in tasks:  # after an exception: nothing may outlive the launcher
                if task.running:
                    task.signal_group(signal.SIGKILL)
                    task.reap()
            deadline = time.monotonic() + DRAIN_SECONDS
            for task in tasks:
                task.drain(deadline)

    def _supervise(self, tasks):
        failed = None
        stop_deadline = None  # when the tasks asked to stop get SIGKILL
        forwarded = killed = False
        while True:
            if self.signals and not forwarded:
                forwarded = True
                self.say(f"received {signal_name(self.signals[0])}: sending SIGTERM to all "
                         f"workers and waiting for them to exit (a second signal kills them)")
                self._signal_running(tasks, signal.SIGTERM)
            if len(self.signals) > 1 and not killed:
                killed = True
                self.say(f"received {signal_name(self.signals[-1])} again: killing all workers")
                self._signal_running(tasks, signal.SIGKILL)
            for task in tasks:
                if task.running and task.exited():
                    task.reap()
                    if task.returncode != 0 and failed is None and not self.signals:
                        failed = task
                        others = [t.name for t in tasks if t.running]
                        stopping = f"; stopping {', '.join(others)}" if others else ""
                        self.say(f"{task.name} {describe_status(task.returncode)}{stopping}")
                        self._signal_running(tasks, signal.SIGTERM)
                        stop_deadline = time.monotonic() + self.grace
            if not any(task.running for task in tasks):
                break
            if stop_deadline is not None and time.monotonic() > stop_deadline and not killed:
                killed = True
                late = ", ".join(task.name for task in tasks if task.running)
                self.say(f"{late} still running {self.grace:g} s after SIGTERM: killing them")
                self._signal_running(tasks, signal.SIGKILL)
            time.sleep(POLL_SECONDS)
        if self.signals:
            return GroupResult(signum=self.signals[0])
        return GroupResult(failed=failed)

    @staticmethod
    def _signal_running(tasks, signum):
        for task in tasks:
            task.signal_group(signum)
