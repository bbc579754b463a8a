"""The model cache (fcn_graph.engines.model_cache): keys, atomic publication, damaged
entries, unwritable caches; a cold `infer --engine onnxruntime` that needs no
TensorFlow; argument errors that need none either."""

import errno
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from fcn_graph.core.errors import UserError
from fcn_graph.core.fileio import cache_dir
from fcn_graph.engines import model_cache

# The checkout: fcn_graph/engines/model_cache.py is three levels below it.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(model_cache.__file__))))
VARIANT = {"opset": 17, "kernels": "cpu"}


def _fake_checkpoint(directory, name="model.ckpt-5", index=b"index bytes", data=b"d" * 100,
                     sidecar=b'{"format": "fcn_graph.checkpoint"}'):
    os.makedirs(directory, exist_ok=True)
    prefix = os.path.join(str(directory), name)
    with open(prefix + ".index", "wb") as handle:
        handle.write(index)
    with open(prefix + ".data-00000-of-00001", "wb") as handle:
        handle.write(data)
    if sidecar is not None:
        with open(prefix + ".json", "wb") as handle:
            handle.write(sidecar)
    return prefix


class CountingBuild:
    """A build that writes a small model file and a larger data file, counting
    its calls; `fail` (an exception) is raised instead when set."""

    def __init__(self, payload=b"weights" * 1000):
        self.calls, self.payload, self.fail, self.folders = 0, payload, None, []

    def __call__(self, folder):
        self.calls += 1
        self.folders.append(folder)
        if self.fail is not None:
            raise self.fail
        with open(os.path.join(folder, model_cache.MODEL_FILE), "wb") as handle:
            handle.write(b"graph")
        with open(os.path.join(folder, model_cache.MODEL_FILE + ".data"), "wb") as handle:
            handle.write(self.payload)
        return {"spec": {"num_classes": 3}}


def _entries(root):
    kind = os.path.join(str(root), model_cache.KIND)
    return sorted(os.listdir(kind)) if os.path.isdir(kind) else []


def test_cache_dir_follows_the_environment():
    assert cache_dir({"FCN_GRAPH_CACHE": "/c", "XDG_CACHE_HOME": "/x"}) == "/c"
    assert cache_dir({"FCN_GRAPH_CACHE": "", "XDG_CACHE_HOME": "/x"}) == "/x/fcn_graph"
    home = os.path.expanduser("~")
    assert cache_dir({}) == os.path.join(home, ".cache", "fcn_graph")


def test_a_miss_builds_and_publishes_then_a_hit_reuses(tmp_path):
    prefix = _fake_checkpoint(tmp_path / "run")
    build = CountingBuild()
    root = str(tmp_path / "cache")
    with model_cache.cached_onnx_model(prefix, variant=VARIANT, build=build, root=root) as first:
        assert not first.hit and first.info == {"spec": {"num_classes": 3}}
        assert open(first.path, "rb").read() == b"graph"
    assert os.path.isfile(first.path), "closing a cached entry keeps it"
    second = model_cache.cached_onnx_model(prefix, variant=VARIANT, build=build, root=root)
    assert second.hit and second.path == first.path and second.info == first.info
    assert build.calls == 1
    assert len(_entries(root)) == 1 and not _entries(root)[0].startswith(".")
    # another variant is another entry
    model_cache.cached_onnx_model(prefix, variant=dict(VARIANT, opset=18), build=build, root=root)
    assert build.calls == 2 and len(_entries(root)) == 2


def test_the_key_follows_the_content_not_the_times(tmp_path):
    prefix = _fake_checkpoint(tmp_path)
    key = model_cache.checkpoint_key(prefix, VARIANT)
    os.utime(prefix + ".index", (1, 1))
    os.utime(prefix + ".data-00000-of-00001", (1, 1))
    assert model_cache.checkpoint_key(prefix, VARIANT) == key
    changes = [lambda: _fake_checkpoint(tmp_path, index=b"index bytez"),
               lambda: _fake_checkpoint(tmp_path, data=b"d" * 101),
               lambda: _fake_checkpoint(tmp_path, sidecar=b'{"format": "other"}'),
               lambda: os.remove(prefix + ".json")]
    seen = {key, model_cache.checkpoint_key(prefix, dict(VARIANT, kernels="reference"))}
    assert len(seen) == 2
    for change in changes:
        _fake_checkpoint(tmp_path)
        change()
        seen.add(model_cache.checkpoint_key(prefix, VARIANT))
    assert len(seen) == 2 + len(changes)


def _flip_middle_byte(path, keep_mtime):
    info = os.stat(path)
    with open(path, "r+b") as handle:
        handle.seek(info.st_size // 2)
        byte = handle.read(1)
        handle.seek(info.st_size // 2)
        handle.write(bytes([byte[0] ^ 0xFF]))
    if keep_mtime:
        os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))


@pytest.mark.parametrize("damage", ["truncated data", "flipped data", "flipped model same mtime",
                                    "no manifest", "garbled manifest", "empty manifest",
                                    "data is a folder"])
def test_a_damaged_entry_is_rebuilt_with_a_note_never_used(tmp_path, capsys, damage):
    prefix = _fake_checkpoint(tmp_path / "run")
    build = CountingBuild()
    root = str(tmp_path / "cache")
    entry = os.path.dirname(model_cache.cached_onnx_model(prefix, variant=VARIANT, build=build,
                                                          root=root).path)
    data, manifest = os.path.join(entry, "model.onnx.data"), os.path.join(entry, "manifest.json")
    if damage == "truncated data":
        os.truncate(data, 10)
    elif damage == "flipped data":
        _flip_middle_byte(data, keep_mtime=False)
    elif damage == "flipped model same mtime":
        _flip_middle_byte(os.path.join(entry, "model.onnx"), keep_mtime=True)
    elif damage == "no manifest":
        os.remove(manifest)
    elif damage == "garbled manifest":
        with open(manifest, "r+b") as handle:
            handle.truncate(30)
    elif damage == "empty manifest":
        open(manifest, "wb").close()
    else:
        os.remove(data)
        os.mkdir(data)
    capsys.readouterr()
    again = model_cache.cached_onnx_model(prefix, variant=VARIANT, build=build, root=root)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"note: cached model {entry} is damaged ("), err
    assert not again.hit and build.calls == 2
    assert open(os.path.join(os.path.dirname(again.path), "model.onnx.data"), "rb").read() \
        == build.payload
    third = model_cache.cached_onnx_model(prefix, variant=VARIANT, build=build, root=root)
    assert third.hit and build.calls == 2
    assert _entries(root) == [os.path.basename(entry)]


def test_an_unwritable_cache_builds_for_this_run_with_a_note(tmp_path, capsys):
    prefix = _fake_checkpoint(tmp_path / "run")
    blocker = tmp_path / "cache_is_a_file"
    blocker.write_bytes(b"")
    build = CountingBuild()
    with model_cache.cached_onnx_model(prefix, variant=VARIANT, build=build,
                                       root=str(blocker)) as found:
        assert not found.hit and open(found.path, "rb").read() == b"graph"
        assert not found.path.startswith(str(blocker))
        folder = os.path.dirname(found.path)
    assert not os.path.exists(folder), "a model built for one run is removed after it"
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"note: cannot write the model cache {blocker} ")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes anyway")
def test_a_read_only_cache_builds_for_this_run(tmp_path, capsys):
    prefix = _fake_checkpoint(tmp_path / "run")
    root = tmp_path / "cache"
    (root / model_cache.KIND).mkdir(parents=True)
    os.chmod(root / model_cache.KIND, 0o500)
    try:
        found = model_cache.cached_onnx_model(prefix, variant=VARIANT, build=CountingBuild(),
                                              root=str(root))
        assert not found.hit and os.path.isfile(found.path)
        found.close()
    finally:
        os.chmod(root / model_cache.KIND, 0o700)
    assert "Permission denied" in capsys.readouterr().err


def test_a_full_disk_during_the_build_falls_back_and_leaves_no_temporary(tmp_path, capsys):
    prefix = _fake_checkpoint(tmp_path / "run")
    root = str(tmp_path / "cache")

    class FullCache(CountingBuild):
        def __call__(self, folder):
            if folder.startswith(root):
                open(os.path.join(folder, model_cache.MODEL_FILE), "wb").close()
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return super().__call__(folder)

    build = FullCache()
    with model_cache.cached_onnx_model(prefix, variant=VARIANT, build=build, root=root) as found:
        assert os.path.isfile(found.path) and not found.hit
    assert _entries(root) == []
    assert "No space left on device" in capsys.readouterr().err
    # with no room anywhere, a one-line UserError
    build.fail = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with pytest.raises(UserError, match="cannot write the converted model of .*No space left"):
        model_cache.cached_onnx_model(prefix, variant=VARIANT, build=build, root=root)
    assert not any(os.path.exists(folder) for folder in build.folders)


def test_a_failed_build_leaves_nothing_and_raises(tmp_path):
    prefix = _fake_checkpoint(tmp_path / "run")
    root = str(tmp_path / "cache")
    build = CountingBuild()
    build.fail = UserError("bad checkpoint")
    with pytest.raises(UserError, match="bad checkpoint"):
        model_cache.cached_onnx_model(prefix, variant=VARIANT, build=build, root=root)
    build.fail = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        model_cache.cached_onnx_model(prefix, variant=VARIANT, build=build, root=root)
    assert _entries(root) == []


def test_a_half_built_entry_is_invisible_and_concurrent_builders_agree(tmp_path):
    prefix = _fake_checkpoint(tmp_path / "run")
    root = str(tmp_path / "cache")
    started, release = threading.Event(), threading.Event()

    class Slow(CountingBuild):
        def __call__(self, folder):
            result = super().__call__(folder)
            started.set()
            assert release.wait(10)
            return result

    results = []
    workers = [threading.Thread(target=lambda: results.append(model_cache.cached_onnx_model(
        prefix, variant=VARIANT, build=Slow(), root=root))) for _ in range(2)]
    for worker in workers:
        worker.start()
    assert started.wait(10)
    # while the files are written, nothing is published
    assert model_cache.lookup(prefix, VARIANT, root=root) is None
    release.set()
    for worker in workers:
        worker.join(10)
    assert len(results) == 2 and all(os.path.isfile(r.path) for r in results)
    for found in results:
        found.close()
    assert len(_entries(root)) == 1, _entries(root)
    assert model_cache.lookup(prefix, VARIANT, root=root).hit


def test_a_checkpoint_rewritten_during_the_build_is_not_cached(tmp_path, capsys):
    prefix = _fake_checkpoint(tmp_path / "run")
    root = str(tmp_path / "cache")

    class Rewriting(CountingBuild):
        def __call__(self, folder):
            _fake_checkpoint(tmp_path / "run", index=b"newer index")
            return super().__call__(folder)

    with model_cache.cached_onnx_model(prefix, variant=VARIANT, build=Rewriting(),
                                       root=root) as found:
        assert os.path.isfile(found.path)
    assert not os.path.exists(found.path)
    assert _entries(root) == []
    assert "changed while it was converted" in capsys.readouterr().err


# End to end: the ONNX engine from the cache, without TensorFlow. ------------------

# Put on PYTHONPATH, this makes any import of TensorFlow fail loudly.
NO_TENSORFLOW = textwrap.dedent("""\
    import sys

    class _NoTensorFlow:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "tensorflow":
                raise ImportError("tensorflow imported in a run that must not need it")
            return None

    sys.meta_path.insert(0, _NoTensorFlow())
    """)


@pytest.fixture
def no_tensorflow_env(tmp_path):
    site = tmp_path / "no_tf_site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(NO_TENSORFLOW)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), REPO]))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def test_the_blocker_blocks(no_tensorflow_env):
    run = subprocess.run([sys.executable, "-c", "import tensorflow"], capture_output=True,
                         text=True, env=no_tensorflow_env, timeout=60)
    assert run.returncode != 0 and "must not need it" in run.stderr


def test_a_second_onnx_run_needs_no_tensorflow_and_gives_the_same_labels(
        tmp_path, tiny_checkpoint_dir, no_tensorflow_env):
    pytest.importorskip("onnxruntime")
    import cv2
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(3)
    for name, size in (("a.png", (37, 45)), ("b.jpg", (20, 29))):
        cv2.imwrite(str(images / name), rng.integers(0, 256, size + (3,), dtype=np.uint8))
    blocked = dict(no_tensorflow_env, FCN_GRAPH_CACHE=str(tmp_path / "cache"))
    plain = dict(blocked, PYTHONPATH=REPO)
    outputs = []
    # a miss (TensorFlow converts), then hits by directory and by file, TensorFlow blocked
    for run_index, (environment, checkpoint) in enumerate([
            (plain, tiny_checkpoint_dir), (blocked, tiny_checkpoint_dir),
            (blocked, os.path.join(tiny_checkpoint_dir, "start.index"))]):
        out = tmp_path / f"out{run_index}"
        run = subprocess.run([sys.executable, "-m", "fcn_graph.infer", str(images),
                              "--checkpoint", checkpoint, "--engine", "onnxruntime",
                              "--output-dir", str(out)],
                             capture_output=True, text=True, env=environment, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        assert "Traceback" not in run.stderr
        outputs.append([open(out / name, "rb").read() for name in ("a.png", "b.png")])
    assert outputs[0] == outputs[1] == outputs[2]
    assert len(_entries(tmp_path / "cache")) == 1


@pytest.fixture(scope="module")
def tiny_checkpoint_dir(tmp_path_factory):
    """A tiny legacy FCN-8s checkpoint (4 classes), made once for this file."""
    from tinyvgg import write_tiny_checkpoint
    return os.path.dirname(write_tiny_checkpoint(tmp_path_factory.mktemp("tiny")))


@pytest.mark.parametrize("argv", [
    ["-m", "fcn_graph.infer", "x.png", "--checkpoint", "c", "--batch", "0"],
    ["-m", "fcn_graph.infer", "x.png"],
    ["-m", "fcn_graph.infer", "x.png", "--engine", "nope"],
    ["-m", "fcn_graph.evaluate", "--no-such-flag"],
    ["-m", "fcn_graph.export", "--checkpoint", "c", "--format", "nope", "--out", "o"],
    ["-m", "fcn_graph.port", "mat2ckpt"],
    ["-m", "fcn_graph.train", "--no-such-flag"],
    ["train.py", "--no-such-flag"],
    ["-m", "fcn_graph.bench", "--no-such-flag"],
])
def test_argument_errors_never_import_tensorflow(argv, no_tensorflow_env):
    run = subprocess.run([sys.executable, *argv], capture_output=True, text=True,
                         env=no_tensorflow_env, timeout=60, cwd=REPO)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "Traceback" not in run.stderr and "must not need it" not in run.stderr
    assert "error:" in run.stderr.splitlines()[-1]


def test_bench_help_never_imports_tensorflow(no_tensorflow_env):
    run = subprocess.run([sys.executable, "-m", "fcn_graph.bench", "--help"],
                         capture_output=True, text=True, env=no_tensorflow_env, timeout=60,
                         cwd=REPO)
    assert run.returncode == 0 and "usage:" in run.stdout, run.stderr[-2000:]
