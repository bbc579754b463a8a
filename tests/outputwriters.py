"""A writer of many files into one output folder, as infer writes them (claim,
write, record, flush), for tests that run several at once in child processes.
It imports nothing but fcn_graph.core.fileio, so that a spawned child starts fast."""

import os

from fcn_graph.core.fileio import OutputFolder


def write_outputs(directory, names, barrier=None):
    """Claim `names` in `directory`'s record, write each file and record it,
    flushing after each file; `barrier` (a multiprocessing.Barrier) makes the
    writers start together."""
    folder = OutputFolder(directory, "--output-dir")
    if barrier is not None:
        barrier.wait()
    folder.claim(names)
    for name in names:
        with open(os.path.join(directory, name), "wb") as handle:
            handle.write(name.encode() * 3)
        folder.wrote(name)
        folder.flush()
