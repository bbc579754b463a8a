"""Training a few steps and evaluating on each annotation-tool format, end to end."""

import json

import numpy as np
import pytest
from owndata import write_coco_splits, write_cvat_masks, write_labelme
from test_train import TINY

from fcn_graph import evaluate
from fcn_graph.training import loop
from fcn_graph.training.config import load_config

WRITERS = {"coco": write_coco_splits, "labelme": write_labelme, "colour_masks": write_cvat_masks}
NAMES = {"coco": ["background", "car", "person"], "labelme": ["background", "cat", "dog"],
         "colour_masks": ["background", "road", "tree"]}


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_train_and_evaluate(tmp_path, kind, capsys):
    root = tmp_path / "data"
    WRITERS[kind](str(root), np.random.default_rng(0))
    run = tmp_path / "run"
    base = [f"data.kind={kind}", f"data.root={root}", "data.val_fraction=0.34",
            f"train.log_dir={run}", *TINY, "train.max_steps=2", "train.eval_every=0"]
    metrics = loop.train(load_config(None, base))
    assert metrics["num_images"] >= 1 and 0.0 <= metrics["mean_iou"] <= 1.0
    resolved = json.loads((run / "config.json").read_text())
    if kind == "labelme":
        assert resolved["data"]["class_names"] == NAMES[kind]
    capsys.readouterr()
    out_json = tmp_path / "m.json"
    assert evaluate.main(["--config", str(run / "config.json"), "--json", str(out_json)]) == 0
    record = json.loads(out_json.read_text())
    assert len(record["per_class_iou"]) == 3
    assert NAMES[kind][2] in capsys.readouterr().out
