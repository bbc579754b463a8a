"""The local launcher (`python -m fcn_graph.launch`) and its process group
(fcn_graph.cluster.procgroup), with fake workers: scripts written into tmp_path that
read TF_CONFIG, print, sleep, exit with chosen codes, kill themselves or start
a child of their own. Every process has a hard timeout, and each test kills only
the processes it started (their command lines name its tmp_path)."""

import ast
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from fcn_graph import launch
from fcn_graph.cluster import procgroup
from fcn_graph.core.errors import run_cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINUX = sys.platform.startswith("linux")

# The start of every fake worker: its index, a marker file that every worker
# appends lines to, pid files, and how many times this worker started before.
HEADER = '''\
import json, os, signal, subprocess, sys, time
CONFIG = json.loads(os.environ["TF_CONFIG"])
INDEX = CONFIG["task"]["index"]
HERE = os.path.dirname(os.path.abspath(__file__))
MARKER = os.path.join(HERE, "marker")


def note(text):
    with open(MARKER, "a") as handle:
        handle.write(text + "\\n")


def starts_before():
    if not os.path.exists(MARKER):
        return 0
    with open(MARKER) as handle:
        return sum(1 for line in handle if line == f"start {INDEX}\\n")


def write_pid(name, pid):
    with open(os.path.join(HERE, name + ".tmp"), "w") as handle:
        handle.write(str(pid))
    os.replace(os.path.join(HERE, name + ".tmp"), os.path.join(HERE, name))


def grandchild(ignore_sigterm=False):
    """Start a sleeping child (its command line names HERE) that writes its pid
    file once it is ready, ignoring SIGTERM if asked."""
    code = "import os, signal, sys, time; "
    if ignore_sigterm:
        code += "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    code += ("path = os.path.join(sys.argv[1], sys.argv[2]); handle = open(path + '.tmp', 'w'); "
             "handle.write(str(os.getpid())); handle.close(); os.replace(path + '.tmp', path); "
             "time.sleep(120)")
    subprocess.Popen([sys.executable, "-c", code, HERE, f"grandchild{INDEX}.pid"])


ATTEMPT = starts_before()
note(f"start {INDEX}")
write_pid(f"worker{INDEX}.pid", os.getpid())
'''


def write_worker(tmp_path, body):
    path = tmp_path / "worker.py"
    path.write_text(HEADER + body)
    return str(path)


def env():
    return dict(os.environ, PYTHONPATH=REPO, FCN_LAUNCH_TEST="kept")


def launch_cmd(*args):
    return [sys.executable, "-m", "fcn_graph.launch", *args]


def run_launch(tmp_path, *args, timeout=60):
    return subprocess.run(launch_cmd(*args), capture_output=True, text=True, env=env(),
                          cwd=tmp_path, timeout=timeout)


def marker_lines(tmp_path):
    path = tmp_path / "marker"
    return path.read_text().splitlines() if path.exists() else []


def alive(pid):
    """Whether `pid` runs (a zombie waiting for its parent does not count)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def ours(pid, tmp_path):
    """Whether `pid` is a process this test started (its command line names tmp_path)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return str(tmp_path).encode() in handle.read()
    except OSError:
        return False


def read_pids(tmp_path, *names, timeout=30):
    """The pids in the pid files `names`, waiting for them to appear."""
    deadline = time.monotonic() + timeout
    while not all((tmp_path / name).exists() for name in names):
        assert time.monotonic() < deadline, f"no pid files {names} after {timeout} s"
        time.sleep(0.05)
    return [int((tmp_path / name).read_text()) for name in names]


def wait_gone(pids, timeout=10):
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [pid for pid in pids if alive(pid)]


@pytest.fixture
def cleanup(tmp_path):
    """After the test, SIGKILL any process named in tmp_path's pid files that is
    still alive and was started by this test."""
    yield
    for path in tmp_path.glob("*.pid"):
        try:
            pid = int(path.read_text())
        except ValueError:
            continue
        if alive(pid) and ours(pid, tmp_path):
            os.kill(pid, signal.SIGKILL)


# The cluster each worker sees and its output. ------------------------------------


def test_each_worker_gets_the_cluster_its_index_and_the_rest_of_the_environment(tmp_path,
                                                                                cleanup):
    script = write_worker(tmp_path, 'print("CONFIG", os.environ["TF_CONFIG"], '
                                    'os.environ.get("FCN_LAUNCH_TEST"))\n')
    run = run_launch(tmp_path, "--workers", "3", "--", script)
    assert run.returncode == 0, run.stderr
    configs = {}
    for line in run.stdout.splitlines():
        match = re.fullmatch(r"\[worker (\d)\] CONFIG (\{.*\}) kept", line)
        assert match, line
        configs[int(match.group(1))] = json.loads(match.group(2))
    assert sorted(configs) == [0, 1, 2]
    cluster = configs[0]["cluster"]
    assert list(cluster) == ["worker"] and len(cluster["worker"]) == 3
    hosts, ports = zip(*(address.rsplit(":", 1) for address in cluster["worker"]))
    assert set(hosts) == {"127.0.0.1"} and len(set(ports)) == 3
    assert all(0 < int(port) < 65536 for port in ports)
    for index, config in configs.items():
        assert config == {"cluster": cluster, "task": {"type": "worker", "index": index}}
    err = run.stderr.splitlines()
    pids = read_pids(tmp_path, "worker0.pid", "worker1.pid", "worker2.pid")
    assert err[0] == (f"fcn_graph.launch: started 3 worker(s) on {', '.join(cluster['worker'])} "
                      f"(pids {', '.join(map(str, pids))})")
    assert err[-1] == "fcn_graph.launch: all 3 workers finished"


def test_output_is_prefixed_by_task_one_whole_line_at_a_time(tmp_path, cleanup):
    """Lines written in pieces, by two workers at once, on stdout and stderr,
    come out whole, each with its worker's prefix; a last line without a newline
    gets one."""
    script = write_worker(tmp_path, '''
for k in range(40):
    for stream in (sys.stdout, sys.stderr):
        stream.write(f"w{INDEX} line {k} ")
        stream.flush()
        stream.write("x" * 300)
        stream.flush()
        if k % 10 == 0:
            time.sleep(0.01)
        stream.write("\\n")
        stream.flush()
sys.stdout.write(f"w{INDEX} tail without newline")
''')
    run = run_launch(tmp_path, "--workers", "2", "--", script)
    assert run.returncode == 0, run.stderr
    for name, text in (("stdout", run.stdout), ("stderr", run.stderr)):
        lines = [line for line in text.splitlines() if not line.startswith("fcn_graph.launch: ")]
        for index in (0, 1):
            own = [line for line in lines if line.startswith(f"[worker {index}] ")]
            expected = [f"[worker {index}] w{index} line {k} " + "x" * 300 for k in range(40)]
            if name == "stdout":
                expected.append(f"[worker {index}] w{index} tail without newline")
            assert own == expected, name
        assert len(lines) == (82 if name == "stdout" else 80)


# Failures and restarts. ---------------------------------------------------------


def test_a_failing_task_stops_the_others_and_the_group_restarts(tmp_path, cleanup):
    script = write_worker(tmp_path, '''
def on_term(signum, frame):
    note(f"term {INDEX}")
    sys.exit(0)

signal.signal(signal.SIGTERM, on_term)
print(f"attempt {ATTEMPT}", os.environ["TF_CONFIG"], flush=True)
if ATTEMPT == 0:
    if INDEX == 1:
        time.sleep(0.3)
        sys.exit(3)
    time.sleep(30)  # until the launcher stops it
    note(f"not stopped {INDEX}")
''')
    start = time.monotonic()
    run = run_launch(tmp_path, "--workers", "2", "--max-restarts", "2", "--grace", "20",
                     "--", script)
    assert run.returncode == 0, run.stderr
    assert time.monotonic() - start < 20  # worker 0 was stopped, not waited for
    lines = marker_lines(tmp_path)
    assert sorted(lines) == ["start 0", "start 0", "start 1", "start 1", "term 0"]
    err = run.stderr.splitlines()
    own = [line for line in err if line.startswith("fcn_graph.launch: ")]
    assert own[1] == "fcn_graph.launch: worker 1 exited with status 3; stopping worker 0"
    assert own[2] == "fcn_graph.launch: restarting the group on fresh ports (restart 1 of 2)"
    assert own[3].startswith("fcn_graph.launch: started 2 worker(s) on ")
    assert own[4:] == ["fcn_graph.launch: all 2 workers finished"]
    # every start named the whole cluster of its own group
    configs = [json.loads(line.split(" ", 4)[4]) for line in run.stdout.splitlines()]
    assert sorted((c["task"]["index"], line.split()[3]) for c, line in
                  zip(configs, run.stdout.splitlines())) == [(0, "0"), (0, "1"), (1, "0"),
                                                             (1, "1")]


def test_restarts_used_up_end_with_one_line_and_status_1(tmp_path, cleanup):
    script = write_worker(tmp_path, '''
if INDEX == 1:
    time.sleep(0.2)
    os.kill(os.getpid(), signal.SIGKILL)
time.sleep(30)
''')
    run = run_launch(tmp_path, "--workers", "2", "--max-restarts", "1", "--", script)
    assert run.returncode == 1
    err = run.stderr.splitlines()
    assert err[-1] == ("fcn_graph.launch: error: worker 1 was killed by SIGKILL; "
                       "gave up after 1 restart")
    assert "Traceback" not in run.stderr
    assert marker_lines(tmp_path).count("start 1") == 2
    assert sum("restarting the group" in line for line in err) == 1

    (tmp_path / "marker").unlink()
    run = run_launch(tmp_path, "--workers", "2", "--max-restarts", "0", "--", script)
    assert run.returncode == 1
    assert run.stderr.splitlines()[-1].endswith("gave up after 0 restarts")
    assert marker_lines(tmp_path).count("start 1") == 1


def test_a_task_that_ignores_sigterm_is_killed_after_the_grace(tmp_path, cleanup):
    script = write_worker(tmp_path, '''
if INDEX == 0:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    grandchild(ignore_sigterm=True)
    time.sleep(60)
time.sleep(0.5)
sys.exit(1)
''')
    start = time.monotonic()
    run = run_launch(tmp_path, "--workers", "2", "--max-restarts", "0", "--grace", "0.5",
                     "--", script)
    assert run.returncode == 1
    assert time.monotonic() - start < 30
    assert "fcn_graph.launch: worker 0 still running 0.5 s after SIGTERM: killing them" in \
        run.stderr.splitlines()
    assert run.stderr.splitlines()[-1].endswith("worker 1 exited with status 1; gave up after "
                                                "0 restarts")
    pids = read_pids(tmp_path, "worker0.pid", "worker1.pid", "grandchild0.pid")
    assert wait_gone(pids) == []


# Signals to the launcher. -------------------------------------------------------


def start_launcher(tmp_path, *args):
    return subprocess.Popen(launch_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env(), cwd=tmp_path)


def finish(proc, timeout=30):
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


SAVES_ON_SIGTERM = '''
def on_term(signum, frame):
    note(f"term {INDEX}")
    time.sleep(0.3)  # a checkpoint being saved
    note(f"saved {INDEX}")
    sys.exit(130)

signal.signal(signal.SIGTERM, on_term)
grandchild(ignore_sigterm=INDEX == 1)
time.sleep(60)
'''


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_launcher_stops_every_task_and_never_restarts(tmp_path, cleanup, signum):
    script = write_worker(tmp_path, SAVES_ON_SIGTERM)
    proc = start_launcher(tmp_path, "--workers", "2", "--", script)
    pids = read_pids(tmp_path, "worker0.pid", "worker1.pid", "grandchild0.pid",
                     "grandchild1.pid")
    proc.send_signal(signum)
    out, err = finish(proc)
    assert proc.returncode == 128 + signum, err
    assert sorted(marker_lines(tmp_path)) == ["saved 0", "saved 1", "start 0", "start 1",
                                              "term 0", "term 1"]
    assert wait_gone(pids) == []  # the grandchild that ignored SIGTERM too
    lines = err.splitlines()
    assert lines[-1] == (f"fcn_graph.launch: stopped by {signal.Signals(signum).name}; "
                         f"all workers have exited")
    assert "restart" not in err and "Traceback" not in err


def test_a_second_signal_kills_the_tasks_at_once(tmp_path, cleanup):
    script = write_worker(tmp_path, '''
signal.signal(signal.SIGTERM, lambda signum, frame: note(f"term {INDEX}"))
grandchild()
time.sleep(60)
''')
    proc = start_launcher(tmp_path, "--workers", "2", "--", script)
    pids = read_pids(tmp_path, "worker0.pid", "worker1.pid", "grandchild0.pid",
                     "grandchild1.pid")
    proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    while marker_lines(tmp_path).count("term 0") + marker_lines(tmp_path).count("term 1") < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.3)
    assert all(alive(pid) for pid in pids[:2])  # they ignore SIGTERM: the launcher waits
    proc.send_signal(signal.SIGINT)
    _, err = finish(proc, timeout=10)
    assert proc.returncode == 143, err
    assert "received SIGINT again: killing all workers" in err
    assert wait_gone(pids) == []


@pytest.mark.skipif(not LINUX, reason="PR_SET_PDEATHSIG is Linux only")
def test_a_killed_launcher_takes_its_tasks_along(tmp_path, cleanup):
    script = write_worker(tmp_path, "time.sleep(60)\n")
    proc = start_launcher(tmp_path, "--workers", "2", "--", script)
    pids = read_pids(tmp_path, "worker0.pid", "worker1.pid")
    proc.kill()
    finish(proc)
    assert wait_gone(pids) == []


# The library in this process. ---------------------------------------------------


def make_launcher(script, workers, **kwargs):
    said = []
    out, err = io.BytesIO(), io.BytesIO()
    launcher = procgroup.Launcher([sys.executable, script], workers, out=out, err=err,
                                  say=said.append, env=env(), **kwargs)
    return launcher, said, out, err


def test_an_exception_in_the_launcher_leaves_no_process(tmp_path, cleanup, monkeypatch):
    script = write_worker(tmp_path, "grandchild(ignore_sigterm=True)\ntime.sleep(60)\n")
    launcher, *_ = make_launcher(script, 2)
    names = ("worker0.pid", "worker1.pid", "grandchild0.pid", "grandchild1.pid")

    def broken(self, tasks):
        read_pids(tmp_path, *names)
        raise RuntimeError("injected")

    monkeypatch.setattr(procgroup.Launcher, "_supervise", broken)
    with pytest.raises(RuntimeError, match="injected"):
        launcher.run()
    assert wait_gone(read_pids(tmp_path, *names)) == []


def test_a_signal_between_two_starts_of_the_group_starts_nothing_more(tmp_path, cleanup):
    script = write_worker(tmp_path, "sys.exit(INDEX)\n")
    launcher, said, *_ = make_launcher(script, 2, max_restarts=3)

    def say(message):
        said.append(message)
        if message.startswith("restarting the group"):
            launcher.request_stop(signal.SIGTERM)

    launcher._say = say
    assert launcher.run() == (143, "stopped by SIGTERM; all workers have exited")
    assert sorted(marker_lines(tmp_path)) == ["start 0", "start 1"]
    assert said[-1] == "restarting the group on fresh ports (restart 1 of 3)"


def test_a_taken_port_starts_the_group_again_without_counting_a_restart(tmp_path, cleanup):
    """Another program takes a picked port before the worker binds it: the worker
    fails with the gRPC server's message, and the group starts on fresh ports."""
    script = write_worker(tmp_path, '''
import socket
port = int(CONFIG["cluster"]["worker"][INDEX].rsplit(":", 1)[1])
server = socket.socket()
try:
    server.bind(("0.0.0.0", port))
except OSError as err:
    print(f"Could not start gRPC server: {err}", file=sys.stderr)
    sys.exit(1)
print("listening", flush=True)
time.sleep(0.5)
''')
    taken = socket.socket()
    taken.bind(("0.0.0.0", 0))
    taken.listen()
    picks = []

    def pick_ports(count, host):
        ports = procgroup.free_ports(count, host)
        if not picks:
            ports[1] = taken.getsockname()[1]
        picks.append(ports)
        return ports

    try:
        launcher, said, out, err = make_launcher(script, 2, max_restarts=0, grace=5,
                                                 pick_ports=pick_ports)
        status, message = launcher.run()
    finally:
        port = taken.getsockname()[1]
        taken.close()
    assert (status, message) == (0, "all 2 workers finished"), said
    assert len(picks) == 2 and launcher.restarts == 0
    assert ("worker 1 exited with status 1: it could not listen on its port (another program "
            "took it after it was picked); starting the group again on fresh ports (port retry "
            "1 of 5, not a restart)") in said
    assert b"[worker 1] Could not start gRPC server: [Errno 98]" in err.getvalue()
    assert out.getvalue().count(b"[worker 0] listening") == 2
    assert out.getvalue().count(b"[worker 1] listening") == 1
    assert port not in picks[1]


def test_the_bind_failure_pattern_matches_tensorflows_lines():
    lines = [b"E0000 00:00:1795952492.120125   23489 add_port.cc:83] Failed to add port to "
             b"server: No address added out of total 1 resolved for '0.0.0.0:44677'",
             b"E0000 00:00:1795952492.123543   23489 grpc_server_lib.cc:618] UNKNOWN: Could "
             b"not start gRPC server",
             b"tensorflow.python.framework.errors_impl.UnknownError: Could not start gRPC server",
             b"OSError: [Errno 98] Address already in use"]
    assert all(procgroup.BIND_FAILURE.search(line) for line in lines)
    assert not procgroup.BIND_FAILURE.search(b"step 10: loss 0.5 (server started)")


def test_describe_status_and_tf_config():
    assert procgroup.describe_status(0) == "exited with status 0"
    assert procgroup.describe_status(2) == "exited with status 2"
    assert procgroup.describe_status(-signal.SIGKILL) == "was killed by SIGKILL"
    assert procgroup.describe_status(-200) == "was killed by signal 200"
    assert json.loads(procgroup.tf_config(["a:1", "b:2"], 1)) == {
        "cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}
    ports = procgroup.free_ports(4)
    assert len(set(ports)) == 4


# Arguments. ---------------------------------------------------------------------


@pytest.mark.parametrize("args,message", [
    (["--workers", "0", "--", "worker.py"],
     "argument --workers: expected an integer in 1..256, found '0'"),
    (["--workers", "two", "--", "worker.py"],
     "argument --workers: expected an integer in 1..256, found 'two'"),
    (["--", "worker.py"], "the following arguments are required: --workers"),
    (["--workers", "2"], "no command given; expected one after '--'"),
    (["--workers", "2", "--"], "no command given; expected one after '--'"),
    (["--workers", "2", "--", "missing.py"],
     "missing.py: expected a Python script to run, found nothing"),
    (["--workers", "2", "--", "./notes.txt"],
     "./notes.txt: expected an executable file, found one that is not executable"),
    (["--workers", "2", "--", "no-such-program-here"],
     "no-such-program-here: command not found on PATH"),
    (["--workers", "2", "--max-restarts", "-1", "--", "worker.py"],
     "argument --max-restarts: expected an integer in 0..1000, found '-1'"),
    (["--workers", "2", "--grace", "0", "--", "worker.py"],
     "argument --grace: expected a number of seconds in (0, 3600], found '0'"),
    (["--workers", "2", "--host", "192.0.2.1", "--", "worker.py"],
     "--host 192.0.2.1: expected an address of this machine"),
])
def test_bad_arguments_are_one_line_errors(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "worker.py").write_text("raise SystemExit('never run')\n")
    (tmp_path / "notes.txt").write_text("not a program\n")
    assert run_cli(launch.main, args, prog="fcn_graph.launch") == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fcn_graph.launch: error: "), captured.err
    assert message in lines[0]
    assert captured.out == ""


def test_help_does_not_import_tensorflow():
    run = subprocess.run([sys.executable, "-X", "importtime", "-m", "fcn_graph.launch", "--help"],
                         capture_output=True, text=True, env=env(), timeout=60, cwd=REPO)
    assert run.returncode == 0 and "usage: python -m fcn_graph.launch --workers N" in run.stdout
    imported = [line.rsplit("|", 1)[-1].strip() for line in run.stderr.splitlines()
                if line.startswith("import time:")]
    assert "fcn_graph.core.errors" in imported  # the check sees the imports
    assert not [name for name in imported if name.split(".")[0] == "tensorflow"]


def test_procgroup_imports_no_command_module():
    with open(procgroup.__file__, encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "fcn_graph.core.errors" in imported
    assert not {name for name in imported if name.startswith("fcn_graph.")} - {"fcn_graph.core.errors"}
    assert "tensorflow" not in imported


# With the real train.py. --------------------------------------------------------


def _train_supports_tf_config():
    return os.path.exists(os.path.join(REPO, "fcn_graph", "distributed.py"))


def _checkpoint_step(run_dir):
    """The step of the newest checkpoint named in `run_dir/checkpoint`, or -1."""
    try:
        text = (run_dir / "checkpoint").read_text()
    except (FileNotFoundError, OSError):
        return -1
    match = re.search(r'^model_checkpoint_path: ".*-(\d+)"$', text, re.MULTILINE)
    return int(match.group(1)) if match else -1


@pytest.mark.skipif(not _train_supports_tf_config(),
                    reason="train.py reads TF_CONFIG once fcn_graph/distributed.py is there")
def test_two_workers_train_restart_once_after_a_kill_and_finish(tmp_path):
    from test_train import empty_config, shapes_args

    from fcn_graph.data import shapes
    from fcn_graph.training.config import load_config

    steps = 100
    args = shapes_args(tmp_path, f"train.max_steps={steps}", "train.checkpoint_every=5",
                       "train.eval_every=0", "train.step_timeout=60")
    config = load_config(None, args)
    data = config.data
    # the dataset exists before the workers start, so that only the kill below fails a task
    shapes.ensure_shapes(data.root, num_train=data.shapes_train_images,
                                 num_val=data.shapes_val_images,
                                 image_size=data.shapes_image_size, seed=config.train.seed)
    command = launch_cmd("--workers", "2", "--max-restarts", "2", "--grace", "3", "--",
                         os.path.join(REPO, "train.py"), "--config", empty_config(tmp_path),
                         *[arg for a in args for arg in ("--set", a)])
    stdout = open(tmp_path / "launcher.out", "w")  # read by nothing but the file
    proc = subprocess.Popen(command, stdout=stdout, stderr=subprocess.PIPE, text=True,
                            env=dict(env(), TF_CPP_MIN_LOG_LEVEL="2"), cwd=tmp_path)
    stdout.close()
    err_lines = []
    reader = threading.Thread(target=lambda: err_lines.extend(proc.stderr), daemon=True)
    reader.start()
    run_dir = tmp_path / "run"
    try:
        deadline = time.monotonic() + 240
        while _checkpoint_step(run_dir) < 5:
            assert proc.poll() is None, "".join(err_lines)[-3000:]
            assert time.monotonic() < deadline, "".join(err_lines)[-3000:]
            time.sleep(0.2)
        started = [line for line in err_lines if " started 2 worker(s) " in line]
        worker1 = int(re.search(r"\(pids \d+, (\d+)\)", started[0]).group(1))
        # Frozen first (a worker this test's launcher started), so that the run
        # cannot finish between the check below and the kill.
        try:
            os.kill(worker1, signal.SIGSTOP)
            with open(f"/proc/{worker1}/stat", encoding="utf-8") as handle:
                state = handle.read().rsplit(")", 1)[1].split()[0]
        except (ProcessLookupError, FileNotFoundError):
            state = "gone"
        log = "".join(err_lines)
        assert len(started) == 1 and state not in ("Z", "X", "gone"), (state, log[-3000:])
        assert _checkpoint_step(run_dir) < steps, log[-3000:]
        os.kill(worker1, signal.SIGKILL)
        proc.wait(timeout=300)  # stderr is the reader thread's alone
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(10)
    err = "".join(err_lines)
    assert proc.returncode == 0, err[-3000:]
    # The launcher names the first task it finds ended: the killed worker, or
    # the chief that lost it.
    assert ("fcn_graph.launch: worker 1 was killed by SIGKILL" in err
            or "fcn_graph.launch: worker 0 exited with status 2" in err), err[-3000:]
    assert err.count("restarting the group") == 1 and "(restart 1 of 2)" in err
    assert err.rstrip().splitlines()[-1] == "fcn_graph.launch: all 2 workers finished"
    assert _checkpoint_step(run_dir) == steps
    assert (run_dir / f"model.ckpt-{steps}.index").exists()
