"""The model cache vouches for what it serves: its key covers the data shards'
content (remembered by their status, so a hit reads no shard), and it uses
only entries in folders this user alone can write (fcn_graph.core.private_files)."""

import os
import stat

import pytest

from fcn_graph.core import fileio, private_files
from fcn_graph.engines import model_cache

VARIANT = {"opset": 17, "kernels": "cpu"}
SHARD = ".data-00000-of-00001"


def _checkpoint(directory, data):
    os.makedirs(directory, exist_ok=True)
    prefix = os.path.join(str(directory), "model.ckpt-5")
    with open(prefix + ".index", "wb") as handle:
        handle.write(b"the same index")
    with open(prefix + SHARD, "wb") as handle:
        handle.write(data)
    return prefix


class ShardCopy:
    """A build whose model holds the bytes of the checkpoint's shard: what it
    serves shows which content was converted."""

    def __init__(self, prefix):
        self.prefix, self.calls = prefix, 0

    def __call__(self, folder):
        self.calls += 1
        with open(self.prefix + SHARD, "rb") as source:
            data = source.read()
        with open(os.path.join(folder, model_cache.MODEL_FILE), "wb") as handle:
            handle.write(data)
        return {"calls": self.calls}


def _served(prefix, root, build):
    with model_cache.cached_onnx_model(prefix, variant=VARIANT, build=build,
                                       root=str(root)) as found:
        with open(found.path, "rb") as handle:
            return handle.read(), found.hit, found.path


@pytest.fixture(autouse=True)
def fresh_notes(monkeypatch):
    """Each test sees its own notes (they are printed once per process)."""
    monkeypatch.setattr(private_files, "_noted", set())


@pytest.fixture
def quick_memo(monkeypatch):
    """Files written a moment ago are remembered too (the racy-write guard off)."""
    monkeypatch.setattr(private_files, "RACY_SECONDS", 0.0)


@pytest.mark.parametrize("how", ["in place", "renamed over"])
@pytest.mark.parametrize("memo", [False, True])
def test_a_replaced_shard_is_never_served(tmp_path, how, memo, request):
    if memo:
        request.getfixturevalue("quick_memo")
    prefix = _checkpoint(tmp_path / "run", b"A" * 4096)
    build = ShardCopy(prefix)
    assert _served(prefix, tmp_path / "cache", build)[:2] == (b"A" * 4096, False)
    assert _served(prefix, tmp_path / "cache", build)[:2] == (b"A" * 4096, True)
    shard = prefix + SHARD
    before = os.stat(shard)
    if how == "in place":
        with open(shard, "r+b") as handle:
            handle.write(b"B" * 4096)
    else:
        other = _checkpoint(tmp_path / "other", b"B" * 4096)
        os.replace(other + SHARD, shard)
    # the same size, the same index, even the same modification time
    os.utime(shard, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert model_cache.lookup(prefix, VARIANT, root=str(tmp_path / "cache")) is None
    assert _served(prefix, tmp_path / "cache", build)[:2] == (b"B" * 4096, False)
    assert build.calls == 2


def test_a_hit_reads_no_shard_once_its_digest_is_remembered(tmp_path, quick_memo,
                                                            monkeypatch):
    prefix = _checkpoint(tmp_path / "run", b"A" * 4096)
    _served(prefix, tmp_path / "cache", ShardCopy(prefix))
    hashed, sha256 = [], private_files.file_sha256
    monkeypatch.setattr(private_files, "file_sha256",
                        lambda path: hashed.append(path) or sha256(path))
    assert _served(prefix, tmp_path / "cache", ShardCopy(prefix))[1]
    assert hashed == []
    memo = tmp_path / "cache" / model_cache.DIGESTS
    assert stat.S_IMODE(os.lstat(memo).st_mode) == 0o600


def test_a_file_changed_just_now_is_hashed_not_remembered(tmp_path):
    path = tmp_path / "shard"
    path.write_bytes(b"x" * 100)
    memo = str(tmp_path / "memo.json")
    assert private_files.file_digest(str(path), memo) == fileio.file_sha256(str(path))
    assert not os.path.exists(memo)


def test_the_memo_follows_size_times_and_inode(tmp_path, quick_memo):
    path = str(tmp_path / "shard")
    memo = str(tmp_path / "memo.json")
    with open(path, "wb") as handle:
        handle.write(b"x" * 100)
    first = private_files.file_digest(path, memo)
    status = os.stat(path)
    with open(path, "r+b") as handle:
        handle.write(b"y")
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))  # only the ctime tells
    second = private_files.file_digest(path, memo)
    assert first != second == fileio.file_sha256(path)


@pytest.mark.parametrize("planted", ["memo writable by others", "memo a link"])
def test_a_memo_not_ours_alone_is_not_believed(tmp_path, quick_memo, planted):
    path = str(tmp_path / "shard")
    with open(path, "wb") as handle:
        handle.write(b"x" * 100)
    memo = str(tmp_path / "memo.json")
    private_files.file_digest(path, memo)
    text = open(memo, encoding="utf-8").read().replace(private_files.file_sha256(path), "0" * 64)
    victim = tmp_path / "victim.json"
    victim.write_text(text)
    os.remove(memo)
    if planted == "memo a link":
        os.symlink(victim, memo)
    else:
        victim.rename(memo)
        os.chmod(memo, 0o666)
    assert private_files.file_digest(path, memo) == private_files.file_sha256(path)
    if planted == "memo a link":
        assert victim.read_text() == text, "a planted link is replaced, never written through"
        assert not os.path.islink(memo)


# ---------------------------------------------------------------- trust

def _loosen_root(root, entry):
    os.chmod(root, 0o777)


def _loosen_kind_dir(root, entry):
    os.chmod(os.path.dirname(entry), 0o775)


def _loosen_entry(root, entry):
    os.chmod(entry, 0o770)


def _loosen_model(root, entry):
    os.chmod(os.path.join(entry, model_cache.MODEL_FILE), 0o666)


def _link_model(root, entry):
    model = os.path.join(entry, model_cache.MODEL_FILE)
    elsewhere = os.path.join(os.path.dirname(root), "elsewhere.onnx")
    os.replace(model, elsewhere)
    os.symlink(elsewhere, model)


def _link_entry(root, entry):
    elsewhere = os.path.join(os.path.dirname(root), "planted_entry")
    os.replace(entry, elsewhere)
    os.symlink(elsewhere, entry)


TRUST = [
    (_loosen_root, "the model cache", "is writable by group and others (mode 0777)"),
    (_loosen_kind_dir, "the model cache folder", "is writable by group (mode 0775)"),
    (_loosen_entry, "ignoring the cached model", "it is writable by group (mode 0770)"),
    (_loosen_model, "ignoring the cached model", "its model.onnx is writable by group and"),
    (_link_model, "ignoring the cached model", "its model.onnx is a symbolic link"),
    (_link_entry, "ignoring the cached model", "it is a symbolic link"),
]


@pytest.mark.parametrize("loosen, what, why", TRUST, ids=[t[0].__name__ for t in TRUST])
def test_an_entry_others_could_write_is_ignored_with_one_note(tmp_path, capsys, loosen, what,
                                                              why):
    prefix = _checkpoint(tmp_path / "run", b"A" * 4096)
    root = str(tmp_path / "cache")
    _, _, path = _served(prefix, root, ShardCopy(prefix))
    entry = os.path.dirname(path)
    loosen(root, entry)
    # what another user planted: the same key, other content
    planted = os.path.realpath(os.path.join(entry, model_cache.MODEL_FILE))
    with open(planted, "r+b") as handle:
        handle.write(b"EVIL")
    capsys.readouterr()
    assert model_cache.lookup(prefix, VARIANT, root=root) is None
    data, hit, served = _served(prefix, root, ShardCopy(prefix))
    assert (data, hit) == (b"A" * 4096, False) and not served.startswith(entry)
    notes = capsys.readouterr().err.splitlines()
    assert len(notes) == 1 and notes[0].startswith(f"note: {what}") and why in notes[0], notes
    assert open(planted, "rb").read(4) == b"EVIL"


def test_an_entry_owned_by_another_user_is_ignored(tmp_path, capsys, monkeypatch):
    prefix = _checkpoint(tmp_path / "run", b"A" * 4096)
    root = str(tmp_path / "cache")
    _served(prefix, root, ShardCopy(prefix))
    owner = os.stat(root).st_uid
    monkeypatch.setattr(os, "geteuid", lambda: owner + 1)
    capsys.readouterr()
    data, hit, _ = _served(prefix, root, ShardCopy(prefix))
    assert (data, hit) == (b"A" * 4096, False)
    err = capsys.readouterr().err
    assert f"is owned by user id {owner}, not by this user ({owner + 1})" in err
    assert len(err.splitlines()) == 1


def test_a_new_cache_is_private_even_with_a_loose_umask(tmp_path):
    prefix = _checkpoint(tmp_path / "run", b"A" * 4096)
    root = tmp_path / "cache"
    old = os.umask(0o002)
    try:
        _, hit, path = _served(prefix, str(root), ShardCopy(prefix))
        assert not hit and _served(prefix, str(root), ShardCopy(prefix))[1]
    finally:
        os.umask(old)
    for folder in (root, root / model_cache.KIND, os.path.dirname(path)):
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700, folder
    for name in os.listdir(os.path.dirname(path)):
        assert not os.stat(os.path.join(os.path.dirname(path), name)).st_mode & 0o022


def test_write_private_file_replaces_a_planted_link(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"theirs")
    target = tmp_path / "file"
    os.symlink(victim, target)
    private_files.write_private_file(str(target), b"ours")
    assert victim.read_bytes() == b"theirs"
    assert not os.path.islink(target) and target.read_bytes() == b"ours"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600


# ---------------------------------------------------------------- the CPU calibration

@pytest.mark.parametrize("loosen, why", [
    (lambda path: os.chmod(path, 0o666), "is writable by group and others (mode 0666)"),
    (lambda path: os.chmod(os.path.dirname(path), 0o777), "is writable by group and others"),
    (lambda path: (os.replace(path, path + ".real"), os.symlink(path + ".real", path)),
     "is a symbolic link"),
])
def test_a_calibration_others_could_write_is_not_read(tmp_path, loosen, why):
    from fcn_graph.host import choice
    key = {"cpu": "test"}
    path = choice.timing_path(key, str(tmp_path))
    os.makedirs(os.path.dirname(path), mode=0o700)
    private_files.write_private_file(path, b'{"format": "not even read"}')
    assert "not a calibration file" in choice.read_timings(path, key)[1]
    loosen(path)
    timings, problem = choice.read_timings(path, key)
    assert timings is None and why in problem and problem.endswith("not this user's alone; ignored")


def test_a_private_folder_is_made_0700_and_a_shared_one_refused(tmp_path):
    folder = tmp_path / "a" / "b"
    assert private_files.make_private_folder(str(folder)) is None
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o1777)
    assert private_files.make_private_folder(str(shared)) == (
        "is writable by group and others (mode 1777)")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        private_files.make_private_folder(str(tmp_path / "file"))


def test_onnxruntime_never_serves_the_model_of_a_replaced_shard(tmp_path, monkeypatch):
    """Two checkpoints of the same shapes: the shard of one copied over the
    other's (the same size, under the same .index) is a miss, never the old model."""
    pytest.importorskip("onnxruntime")
    import glob
    import shutil

    from tinyvgg import write_tiny_checkpoint

    from fcn_graph import port
    from fcn_graph.engines import onnx_engine
    monkeypatch.setenv("FCN_GRAPH_CACHE", str(tmp_path / "cache"))
    (tmp_path / "a").mkdir()
    prefix = write_tiny_checkpoint(tmp_path / "a")
    other = str(tmp_path / "b" / "start")
    assert port.main(["mat2ckpt", str(tmp_path / "a" / "vgg.mat"), "--num-classes", "4",
                      "--fc-width", "6", "--seed", "1", "--out", other]) == 0
    with onnx_engine.converted_model(prefix):
        pass
    found = onnx_engine.find_converted(prefix)
    assert found is not None and found.hit
    found.close()
    (shard,) = glob.glob(prefix + ".data-*")
    replacement = other + shard[len(prefix):]
    assert os.path.getsize(shard) == os.path.getsize(replacement)
    assert open(shard, "rb").read() != open(replacement, "rb").read()
    shutil.copyfile(replacement, shard)
    assert onnx_engine.find_converted(prefix) is None
