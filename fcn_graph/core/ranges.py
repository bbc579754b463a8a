"""Numbers from users: finite, and inside a stated range.

    parser.add_argument("--alpha", type=Range(0, 1), ...)           # a float in [0, 1]
    parser.add_argument("--batch", type=Range(1, 1024, integer=True))
    problem = Range(0, 1, low_open=True).problem(value)          # config values

A `Range` is an argparse type: it parses the text and raises
`argparse.ArgumentTypeError` ("expected a number in [0, 1], found 'nan'"),
which argparse reports on one line naming the flag, with exit status 2. The
same `Range` checks values that arrive already parsed (a config key, where
JSON reads 1e400 as infinity) through `problem` or `check`.
"""

import argparse
import math
import numbers
import os

from fcn_graph.core.errors import UserError

# --threads and train.threads: at most this many threads per CPU core; more
# only add switching between threads, and tens of thousands of threads never
# finish starting.
THREADS_PER_CORE = 4
# The longest text of a bad value repeated in a message.
SHOWN_CHARS = 40


def shown(value):
    """`value` for a message: a string quoted, cut to SHOWN_CHARS characters."""
    text = value if isinstance(value, str) else repr(value)
    text = repr(text) if isinstance(value, str) else text
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS - 3] + "..."


class Range:
    """Finite numbers from `low` to `high` (each end included unless
    `low_open` / `high_open`), whole numbers only when `integer`. `unit`
    names what is counted ("seconds", "GB"), for the messages."""

    def __init__(self, low, high, *, integer=False, low_open=False, high_open=False, unit=None):
        self.low, self.high, self.integer = low, high, integer
        self.low_open, self.high_open, self.unit = low_open, high_open, unit
        self.__name__ = "integer" if integer else "number"   # argparse names a type by it

    def describe(self):
        """What is expected: "an integer in 1..1024", "a number of seconds in (0, 86400]"."""
        kind = "an integer" if self.integer else "a number"
        if self.unit:
            kind += f" of {self.unit}"
        if self.integer and not (self.low_open or self.high_open):
            return f"{kind} in {self.low}..{self.high}"
        return (f"{kind} in {'(' if self.low_open else '['}{self.low:g}, "
                f"{self.high:g}{')' if self.high_open else ']'}")

    def contains(self, value):
        """Whether the number `value` is finite, whole when integer, and inside."""
        if isinstance(value, float) and not (math.isfinite(value)
                                             and (value.is_integer() or not self.integer)):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def problem(self, value):
        """None when `value` (already parsed) belongs to the range, else
        "expected ..., found ..." on one line."""
        wanted = int if self.integer else numbers.Real
        if isinstance(value, bool) or not isinstance(value, wanted):
            return f"expected {self.describe()}, found {shown(value)}"
        if isinstance(value, float) and not math.isfinite(value):
            return f"expected {self.describe()}, found {value} (not a finite number)"
        if not self.contains(value):
            return f"expected {self.describe()}, found {shown(value)}"
        return None

    def check(self, value, where):
        """`value` when it belongs to the range, else a UserError "`where`: expected ..."."""
        found = self.problem(value)
        if found is not None:
            raise UserError(f"{where}: {found}")
        return value

    def __call__(self, text):
        """argparse type: the number that `text` spells, when inside the range."""
        try:
            value = int(text, 10) if self.integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {self.describe()}, found {shown(text)}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(
                f"expected {self.describe()}, found {shown(text)} (not a finite number)")
        if not self.contains(value):
            raise argparse.ArgumentTypeError(
                f"expected {self.describe()}, found {shown(text)}")
        return value

    def __repr__(self):
        return f"Range({self.describe()})"


def max_threads():
    """The most threads per op a command accepts: THREADS_PER_CORE per CPU core."""
    return THREADS_PER_CORE * (os.cpu_count() or 1)


def threads_range():
    """The range of --threads and train.threads on this machine."""
    return Range(1, max_threads(), integer=True)


# The ranges several commands share.
MEAN_RANGE = Range(0, 255)                 # one channel of a mean pixel, 0..255 scale
ALPHA_RANGE = Range(0, 1)                          # opacity of an overlay
BATCH_RANGE = Range(1, 1024, integer=True)         # images run together
NUM_CLASSES_RANGE = Range(2, 255, integer=True)    # 255 is the ignore label
FC_WIDTH_RANGE = Range(1, 65536, integer=True)     # channels of conv6/conv7
WIDTH_MULTIPLIER_RANGE = Range(0, 8, low_open=True)  # of the VGG body's channels
SEED_RANGE = Range(0, 2**31 - 1, integer=True)
MEMORY_BUDGET_RANGE = Range(0, 4096, low_open=True, unit="GB")
IMAGE_COUNT_RANGE = Range(1, 10**9, integer=True)
REPEATS_RANGE = Range(1, 10**6, integer=True)
