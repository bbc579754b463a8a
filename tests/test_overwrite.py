"""One overwrite rule for every command: a file is replaced only when the
folder's record shows that fcn_graph wrote it there and nobody changed it
since; `--force` widens that to fcn_graph's own changed output, never to
another file. Training refused at start writes nothing in its log_dir, and a
checkpoint that does not read is moved aside, never written over. Writers
running at once in one folder keep one consistent record."""

import json
import multiprocessing
import os

import pytest
from outputwriters import write_outputs
from test_outputs_safe import _error, _image, weights  # noqa: F401  (a fixture)
from test_train import shapes_args

from bench import harness
from fcn_graph import evaluate, export, infer
from fcn_graph.core import fileio
from fcn_graph.core.errors import UserError
from fcn_graph.training import loop
from fcn_graph.training.config import load_config
from fcn_graph.weights import checkpoint
from fcn_graph.weights.checkpoint_files import list_checkpoints

USERS = b"a user's file: must not change\n"


def _export(ckpt, fmt, out, *extra):
    return export.main(["--checkpoint", ckpt, "--format", fmt, "--no-verify", "--out", str(out),
                        *extra])


# -- export ------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt, name, extra", [
    ("onnx", "notes.onnx", ()),
    ("frozen", "m.pb", ()),
    ("onnx", "w.onnx.data", ("--external-data",)),
])
def test_export_force_never_replaces_a_file_it_did_not_write(tmp_path, weights, capsys,  # noqa: F811
                                                             fmt, name, extra):
    users = tmp_path / name
    users.write_bytes(USERS)
    out = tmp_path / ("w.onnx" if name.endswith(".data") else name)
    err = _error(capsys, export.main, "--checkpoint", weights["ckpt"], "--format", fmt,
                 "--no-verify", "--out", out, "--force", *extra)
    assert f"--out {users}: exists and was not written by fcn_graph; --force replaces only" in err
    assert users.read_bytes() == USERS
    assert sorted(os.listdir(tmp_path)) == [name]


@pytest.mark.parametrize("fmt, name, extra", [
    ("frozen", "m.pb", ()),
    ("onnx", "m.onnx", ("--external-data",)),
    ("savedmodel", "saved", ()),
])
def test_export_force_replaces_its_own_export_even_when_changed(tmp_path, weights, capsys,  # noqa: F811
                                                                fmt, name, extra):
    out = tmp_path / name
    assert _export(weights["ckpt"], fmt, out, *extra) == 0
    changed = out / "saved_model.pb" if fmt == "savedmodel" else out
    first = changed.read_bytes()
    changed.write_bytes(first + b"edited")
    assert "exists; refusing to replace it (pass --force" in _error(
        capsys, export.main, "--checkpoint", weights["ckpt"], "--format", fmt, "--no-verify",
        "--out", out, *extra)
    assert changed.read_bytes() == first + b"edited"
    assert _export(weights["ckpt"], fmt, out, "--force", *extra) == 0
    assert not changed.read_bytes().endswith(b"edited")
    record = fileio.OutputFolder(str(tmp_path), None)
    names = [name, name + ".data"] if extra else [name]
    assert sorted(record.files) == names and all(record.owns(n) for n in names)


# -- evaluate --json and bench --out -----------------------------------------------------------

def test_evaluate_json_replaces_only_its_unchanged_file(tmp_path, weights, voc_root,  # noqa: F811
                                                        capsys):
    out = tmp_path / "res" / "final.json"
    run = ["--set", "data.kind=voc", "--set", f"data.root={voc_root}",
           "--checkpoint", weights["voc"], "--max-images", "1", "--json", str(out)]
    assert evaluate.main(run) == 0
    assert evaluate.main(run) == 0  # its own, unchanged: replaced
    edited = json.loads(out.read_text())
    edited["note"] = "checked by hand"
    out.write_text(json.dumps(edited))
    capsys.readouterr()
    err = _error(capsys, evaluate.main, *run)
    assert f"--json {out}: exists and was not written by fcn_graph (or was changed since)" in err
    assert json.loads(out.read_text())["note"] == "checked by hand"


def test_bench_out_refuses_a_report_it_did_not_write(tmp_path, capsys, monkeypatch):
    """A file that looks like a report (it holds the keys) is still not one
    that this folder's record shows bench wrote."""
    report = {"started_utc": "2026-01-01T00:00:00Z", "results": []}
    monkeypatch.setattr(harness, "run_benchmark", lambda args: dict(report))
    monkeypatch.setattr(harness, "format_report", lambda report: "report")
    out = tmp_path / "r.json"
    out.write_text(json.dumps(report) + "\n")
    before = out.read_bytes()
    err = _error(capsys, harness.main, "--out", out)
    assert f"--out {out}: exists and was not written by fcn_graph" in err
    assert out.read_bytes() == before
    os.remove(out)
    assert harness.main(["--out", str(out)]) == 0
    assert harness.main(["--out", str(out)]) == 0  # its own, unchanged: replaced
    out.write_text(out.read_text().replace("2026", "2027"))
    capsys.readouterr()
    assert "(or was changed since)" in _error(capsys, harness.main, "--out", out)


# -- training ---------------------------------------------------------------------------

def _listing(directory):
    return {name: (os.path.getsize(os.path.join(directory, name)),
                   os.stat(os.path.join(directory, name)).st_mtime_ns)
            for name in os.listdir(directory)}


def test_a_refused_resume_writes_nothing_in_the_log_dir(tmp_path):
    args = shapes_args(tmp_path, "train.max_steps=2", "train.eval_every=0")
    loop.train(load_config(None, args))
    run = tmp_path / "run"
    config_text = (run / "config.json").read_text()
    before = _listing(run)
    before.pop(".lock")
    with pytest.raises(UserError, match="cannot restore the model: missing"):
        loop.train(load_config(None, args + ["train.max_steps=4",
                                                 "train.optimizer=sgd"]))
    after = _listing(run)
    after.pop(".lock")
    assert after == before
    assert (run / "config.json").read_text() == config_text
    assert json.loads(config_text)["train"]["optimizer"] == "adam"


def test_a_checkpoint_without_index_is_moved_aside_not_overwritten(tmp_path, capsys):
    args = shapes_args(tmp_path, "train.max_steps=4", "train.eval_every=0")
    loop.train(load_config(None, args))
    run = tmp_path / "run"
    os.remove(run / "model.ckpt-4.index")
    data = (run / "model.ckpt-4.data-00000-of-00001").read_bytes()
    sidecar = (run / "model.ckpt-4.json").read_bytes()
    capsys.readouterr()
    loop.train(load_config(None, args + ["train.max_steps=6"]))
    err = capsys.readouterr().err
    aside = run / checkpoint.BROKEN_DIR / "model.ckpt-4"
    assert f"moved checkpoint model.ckpt-4 aside to {aside}/ (model.ckpt-4.index is missing)" \
        in err
    assert (aside / "model.ckpt-4.data-00000-of-00001").read_bytes() == data
    assert (aside / "model.ckpt-4.json").read_bytes() == sidecar
    assert "model.ckpt-4.index is missing" in (aside / checkpoint.REASON_NAME).read_text()
    assert checkpoint.checkpoint_problem(str(run / "model.ckpt-4")) is None  # written anew
    assert [r.step for r in list_checkpoints(str(run))][:2] == [6, 4]


# -- several writers in one folder -------------------------------------------------------

def test_two_writers_interleaved_keep_both_records(tmp_path):
    out = str(tmp_path / "out")
    first = fileio.OutputFolder(out, "--output-dir")   # loaded before the second wrote
    write_outputs(out, ["b1.png", "b2.png"])
    first.claim(["a1.png"])
    with open(os.path.join(out, "a1.png"), "wb") as handle:
        handle.write(b"a")
    first.wrote("a1.png")
    first.flush()
    again = fileio.OutputFolder(out, "--output-dir")
    assert sorted(again.files) == ["a1.png", "b1.png", "b2.png"]
    assert all(again.owns(name) for name in again.files)
    again.claim(["a1.png", "b1.png", "b2.png"])  # a rerun of either is not refused


def test_two_infer_runs_into_one_folder_both_stay_on_record(tmp_path, weights,  # noqa: F811
                                                            monkeypatch):
    """Run B starts and finishes while run A is between loading the record
    and claiming its files; afterwards both are on record and a rerun of
    either replaces its own files."""
    out = tmp_path / "out"
    runs = {}
    for name in ("a", "b"):
        _image(tmp_path / name / f"{name}.png", seed=len(runs))
        runs[name] = [str(tmp_path / name), "--checkpoint", weights["ckpt"], "--output-dir",
                      str(out)]
    real_claim = fileio.OutputFolder.claim

    def claim_after_the_other_run(self, names, *args, **kwargs):
        monkeypatch.setattr(fileio.OutputFolder, "claim", real_claim)
        assert infer.main(runs["b"]) == 0
        return real_claim(self, names, *args, **kwargs)

    monkeypatch.setattr(fileio.OutputFolder, "claim", claim_after_the_other_run)
    assert infer.main(runs["a"]) == 0
    assert fileio.OutputFolder.claim is real_claim  # run B did run inside run A
    record = fileio.OutputFolder(str(out), "--output-dir")
    written = sorted(n for n in os.listdir(out) if n != fileio.OUTPUT_RECORD)
    assert written == ["a.png", "a_overlay.png", "b.png", "b_overlay.png"]
    assert sorted(record.files) == written and all(record.owns(n) for n in written)
    assert infer.main(runs["b"]) == 0 and infer.main(runs["a"]) == 0


def test_writers_in_several_processes_keep_one_consistent_record(tmp_path):
    out = str(tmp_path / "out")
    os.makedirs(out)
    context = multiprocessing.get_context("spawn")
    writers = 4
    barrier = context.Barrier(writers)
    names = [[f"w{w}_{i}.png" for i in range(12)] for w in range(writers)]
    procs = [context.Process(target=write_outputs, args=(out, names[w], barrier))
             for w in range(writers)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
    assert [proc.exitcode for proc in procs] == [0] * writers
    record = fileio.OutputFolder(out, "--output-dir")
    everything = sorted(n for group in names for n in group)
    assert sorted(record.files) == everything
    assert all(record.owns(n) and not record.files[n].get("pending") for n in everything)


def test_a_failed_run_does_not_make_an_edit_of_its_file_count_as_its_own(tmp_path):
    """A run claims its earlier output, then fails before writing it; the user
    edits the file; the next run must still see the edit."""
    out = str(tmp_path / "out")
    write_outputs(out, ["m.json"])
    fileio.OutputFolder(out, "--json").claim(["m.json"])  # ... and the run fails here
    with open(os.path.join(out, "m.json"), "ab") as handle:
        handle.write(b" edited")
    with pytest.raises(UserError, match="was not written by fcn_graph into --json .* \\(or was "
                                        "changed since\\)"):
        fileio.OutputFolder(out, "--json").claim(["m.json"])
