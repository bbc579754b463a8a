"""Which address a worker's gRPC server listens on: README's network-security
paragraph and fcn_graph.launch say every interface, whatever host TF_CONFIG
names; this checks it on the running system (in a fresh process, as a server
cannot be stopped)."""

import json
import os
import subprocess
import sys

import pytest

SERVER = """
import json, socket, sys, time
import tensorflow as tf
from fcn_graph.cluster import distributed
probe = socket.socket()
probe.bind(("127.0.0.1", 0))
port = probe.getsockname()[1]
probe.close()
cluster = distributed.parse_tf_config(json.dumps(
    {"cluster": {"worker": [f"127.0.0.1:{port}"]}, "task": {"type": "worker", "index": 0}}))
server = distributed.start_server(cluster, tf.compat.v1.ConfigProto())
listening = []
for name in ("/proc/net/tcp", "/proc/net/tcp6"):
    with open(name) as table:
        for row in table.read().splitlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                listening.append(address)
print(json.dumps(listening))
"""


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads /proc/net/tcp")
def test_a_worker_named_on_loopback_still_listens_on_every_interface():
    run = subprocess.run([sys.executable, "-c", SERVER], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=os.getcwd()), timeout=120)
    assert run.returncode == 0, run.stderr
    listening = set(json.loads(run.stdout.strip().splitlines()[-1]))  # hex addresses
    assert listening, "the server listens nowhere"
    # 0.0.0.0 or :: in /proc's hex form: the wildcard address, not 127.0.0.1 (0100007F)
    assert listening <= {"00000000", "0" * 32}, listening
