import json
import os

import pytest

from fcn_graph.cli import add_config_args
from fcn_graph.core.errors import UserError
from fcn_graph.training.config import load_config, save_resolved_config


def write(tmp_path, text, name="config.json"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_defaults_file_with_comments_and_overrides(tmp_path):
    path = write(tmp_path, """
        // comments are allowed
        {
          "train": {"batch_size": 4,  # so is this style
                    "learning_rate": 1},
          "data": {"kind": "voc", "root": "/data/voc"}
        }""")
    config = load_config(path, ["train.batch_size=8", "model.vgg_mat=null",
                                "train.log_dir=runs/x=y", "train.scale_range=[0.5, 1.5]"])
    assert config.train.batch_size == 8  # --set beats the file
    assert config.train.learning_rate == 1.0 and isinstance(config.train.learning_rate, float)
    assert config.data.root == "/data/voc"
    assert config.train.log_dir == "runs/x=y"  # not JSON: kept as a string
    assert config.train.scale_range == [0.5, 1.5]
    assert config.train.keep_prob == 0.85  # default
    assert config.model.architecture == "legacy"
    assert config.model.kernels == "auto"


def test_repo_config_json_is_valid():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(root, "config.json")
    if not os.path.exists(path):
        pytest.skip("no config.json at the top of the repository")
    config = load_config(path)
    assert config.data.kind == "shapes"


@pytest.mark.parametrize("text, message", [
    ('{"train": {"batch_size": -2}}',
     "config.json: train.batch_size: expected an integer in 1..4096, found -2"),
    ('{"train": {"batchsize": 2}}', "config.json: unknown config key 'train.batchsize'"),
    ('{"trian": {}}', "config.json: unknown config section 'trian'"),
    ('{"train": {"batch_size": "2"}}',
     "config.json: train.batch_size: expected an integer, found string '2'"),
    ('{"train": {"batch_size": 2.5}}', "train.batch_size: expected an integer, found 2.5"),
    ('{"train": {"flip": 1}}', "train.flip: expected true or false, found 1"),
    ('{"train": {"image_size": 0}}', "train.image_size: expected an integer in 1..16384, found 0"),
    ('{"train": {"keep_prob": 0}}', "train.keep_prob: expected a number in (0, 1], found 0"),
    ('{"train": {"keep_prob": 1.5}}', "train.keep_prob: expected a number in (0, 1]"),
    ('{"data": {"kind": "voc"}}', "config.json: data.root: required for data.kind 'voc'"),
    ('{"data": {"kind": "cityscapes", "root": "x"}}', "data.kind: expected one of voc, ade20k"),
    ('{"model": {"vgg_mat": "vgg.mat", "vgg_width": 0.5}}', "model.vgg_width: must be 1.0"),
    ('{"model": {"architecture": "fcn32"}}', "model.architecture: expected one of legacy, paper"),
    ('{"model": {"kernels": "gpu"}}', "model.kernels: expected one of auto, reference, cpu, found 'gpu'"),
    ('{"train": {"optimizer": "rmsprop"}}', "train.optimizer: expected one of adam, sgd"),
    ('{"train": {"scale_range": [2, 1]}}', "train.scale_range: expected [min, max]"),
    ('{"train": {"allreduce_dtype": "float16"}}',
     "train.allreduce_dtype: expected one of float32, bfloat16, found 'float16'"),
    ('[1, 2]', "config.json: expected a JSON object of sections"),
    ('{"train": {', "config.json: not valid JSON"),
])
def test_file_errors_name_the_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(UserError) as info:
        load_config(path)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_set_errors_name_the_key():
    with pytest.raises(UserError, match=r"^--set: train.batch_size: expected an integer in 1..4096"):
        load_config(None, ["train.batch_size=-2"])
    with pytest.raises(UserError, match="unknown config key 'train.nope'"):
        load_config(None, ["train.nope=1"])
    with pytest.raises(UserError, match="expected section.key=value"):
        load_config(None, ["train.batch_size"])
    with pytest.raises(UserError, match="config file not found"):
        load_config("/nonexistent/config.json")


def test_argparse_helpers():
    import argparse

    parser = add_config_args(argparse.ArgumentParser())
    args = parser.parse_args(["--config", "c.json", "--set", "a.b=1", "--set", "c.d=x"])
    assert args.config == "c.json" and args.overrides == ["a.b=1", "c.d=x"]


def test_save_resolved_config_round_trips(tmp_path):
    config = load_config(None, ["train.seed=7"])
    path = save_resolved_config(config, str(tmp_path / "run"))
    assert sorted(os.listdir(tmp_path / "run")) == ["config.json"]  # no temp file left
    data = json.loads(open(path).read())
    assert data["train"]["seed"] == 7
    assert load_config(path).train.seed == 7
