"""Checks on the values that enter as weights: finite numbers, and a mean
pixel of three values on the 0..255 scale."""

import numbers

import numpy as np

from fcn_graph.core.errors import UserError

# A mean of pixels that lie in 0..255 lies in 0..255 too.
MEAN_PIXEL_RANGE = (0.0, 255.0)


def nonfinite(array):
    """None when every value of a floating-point `array` is finite, else what
    was found ("12 NaN values", "1 infinite value", "3 NaN and 2 infinite
    values"). Arrays of other dtypes (integers, strings) hold no such values."""
    array = np.asarray(array)
    # A NaN or an infinity makes the sum non-finite, and a sum needs no
    # temporary array as isfinite does. A sum that overflows from finite
    # values is caught by the exact count below.
    if array.dtype.kind not in "fc":
        return None
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(array.sum()):
            return None
    nans = int(np.count_nonzero(np.isnan(array)))
    infs = int(np.count_nonzero(np.isinf(array)))
    if not nans and not infs:
        return None

    def count(n, what):
        return f"{n} {what} value" + ("" if n == 1 else "s")

    if nans and infs:
        return f"{nans} NaN and {count(infs, 'infinite')}"
    return count(nans, "NaN") if nans else count(infs, "infinite")


def check_finite_array(array, where):
    """Raise a UserError "`where` holds 12 NaN values" unless all of `array` is finite."""
    found = nonfinite(array)
    if found is not None:
        raise UserError(f"{where} holds {found}; expected finite numbers")


def check_mean_pixel(values, where):
    """The mean pixel `values` (a list, tuple or array) as a tuple of 3 floats.
    Raise a UserError naming `where` unless it is exactly 3 finite real numbers
    in MEAN_PIXEL_RANGE."""
    low, high = MEAN_PIXEL_RANGE
    items = list(values) if isinstance(values, (list, tuple, np.ndarray)) else None
    if items is not None and isinstance(values, np.ndarray) and values.ndim != 1:
        items = None
    if items is None or len(items) != 3 or not all(
            isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) for v in items):
        raise UserError(f"{where}: expected 3 numbers (one per colour channel, 0..255 scale), found "
                        f"{_short(values)}")
    mean = tuple(float(v) for v in items)
    if not all(np.isfinite(mean)):
        raise UserError(f"{where}: {list(mean)} is not finite; expected 3 numbers in "
                        f"{low:g}..{high:g}")
    if not all(low <= v <= high for v in mean):
        raise UserError(f"{where}: {list(mean)} lies outside {low:g}..{high:g}, the scale of "
                        "the pixels it is subtracted from")
    return mean


def _short(value):
    text = repr(value.tolist() if isinstance(value, np.ndarray) else value)
    return text if len(text) <= 60 else text[:57] + "..."
