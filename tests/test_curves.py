import cv2
import numpy as np

from fcn_graph.training.curves import (
    CURVES_NAME,
    HISTORY_NAME,
    append_history,
    plot_curves,
    read_history,
    series,
)


def test_history_survives_a_torn_line_and_a_resume(tmp_path):
    for step in (10, 20, 30):
        append_history(str(tmp_path), {"step": step, "loss": 1.0 / step})
    append_history(str(tmp_path), {"step": 20, "mean_iou": 0.5})
    with open(tmp_path / HISTORY_NAME, "a") as handle:
        handle.write('{"step": 40, "lo')  # killed mid-write
    # Resumed from the checkpoint at step 20: steps 30 (and the torn 40) are redone.
    append_history(str(tmp_path), {"step": 30, "loss": 0.02})
    append_history(str(tmp_path), {"step": 40, "loss": 0.01})
    records = read_history(str(tmp_path))
    steps, losses = series(records, "loss")
    np.testing.assert_array_equal(steps, [10, 20, 30, 40])
    np.testing.assert_allclose(losses, [0.1, 0.05, 0.02, 0.01])
    assert series(records, "mean_iou")[1].tolist() == [0.5]


def test_plot_draws_both_curves(tmp_path):
    records = [{"step": s, "loss": 2.0 * 0.9 ** s} for s in range(0, 200, 10)]
    records += [{"step": 100, "mean_iou": 0.4}, {"step": 200, "mean_iou": 0.9}]
    path = str(tmp_path / CURVES_NAME)
    plot_curves(records, path, width=400, height=200)
    image = cv2.imread(path)
    assert image.shape == (400, 400, 3)
    loss_panel, iou_panel = image[:200], image[200:]
    # The loss colour (BGR of RGB (200, 60, 30)) appears only in the top panel, the
    # IoU colour only in the bottom one.
    loss_colour = np.all(np.abs(image.astype(int) - (30, 60, 200)) < 40, axis=2)
    iou_colour = np.all(np.abs(image.astype(int) - (200, 120, 30)) < 40, axis=2)
    assert loss_colour[:200].sum() > 50 and loss_colour[200:].sum() == 0
    assert iou_colour[200:].sum() > 20 and iou_colour[:200].sum() == 0
    # The IoU line rises from left to right: its rightmost pixels sit higher.
    ys, xs = np.nonzero(iou_colour[200:])
    assert ys[xs > xs.max() - 5].mean() < ys[xs < xs.min() + 5].mean()
    assert loss_panel.std() > 0 and iou_panel.std() > 0


def test_plot_with_no_history(tmp_path):
    plot_curves([], str(tmp_path / "empty.png"))
    assert cv2.imread(str(tmp_path / "empty.png")) is not None
