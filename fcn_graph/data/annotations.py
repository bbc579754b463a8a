"""What the annotation-tool kinds (coco, labelme, colour_masks) share.

Each opens a split into a `splits.SplitFiles` whose `reader` decodes an item's
image and rasterises its label on the fly (`datasets.open_config_split`
dispatches). The helpers here read JSON with one-line errors and check class
names.
"""

import json
import math

from fcn_graph.core.errors import UserError
from fcn_graph.core.fileio import read_input
from fcn_graph.data import image_files


def read_json(path, expected):
    """The parsed JSON file at `path` (a regular UTF-8 file), or a UserError
    naming it: missing, not a regular file, not UTF-8, not JSON or cut short."""
    raw = read_input(path, expected)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (byte 0x{raw[err.start]:02x} at offset "
                        f"{err.start}; expected {expected})") from None
    if not text.strip():
        raise UserError(f"{path}: empty file (expected {expected})")
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as err:
        cut = " (cut short?)" if err.pos >= len(text.rstrip()) else ""
        raise UserError(f"{path}: not valid JSON{cut}: {err.msg} at line {err.lineno}, "
                        f"column {err.colno} (expected {expected})") from None
    except ValueError as err:
        raise UserError(f"{path}: {err} (expected {expected})") from None


def _refuse_constant(name):
    raise ValueError(f"found {name}, which is not a JSON number")


def check_class_names(names, where):
    """Raise UserError naming `where` when `names` (class 0 first) are not usable:
    more than 255 classes, fewer than 2, an empty name or two names that are
    equal once stripped and case-folded."""
    image_files.check_num_classes(len(names), where)
    problem = class_names_problem(list(names))
    if problem:
        raise UserError(f"{where}: {problem}")


def class_index(names):
    """{normalised name: class id} of `names`."""
    return {normal_class_name(name): index for index, name in enumerate(names)}


def is_number(value):
    """Whether `value` is a finite JSON number (not a bool)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def is_count(value):
    """Whether `value` is a JSON integer >= 0 (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def normal_class_name(name):
    """The form in which class names are compared: stripped and case-folded."""
    return name.strip().casefold()


def class_names_problem(names):
    """What is wrong with a list of class names (class 0 first), or None: fewer
    than 2 or more than 255 names, an empty name, a line break, or two names
    equal after `normal_class_name`."""
    if not 2 <= len(names) <= 255:
        return (f"expected 2 to 255 class names (class 0 first; 255 is the ignore label), "
                f"found {len(names)}")
    seen = {}
    for index, name in enumerate(names):
        if not name.strip() or "\n" in name or "\r" in name:
            return f"class {index}: expected a non-empty one-line name, found {name!r}"
        key = normal_class_name(name)
        if key in seen:
            return (f"classes {seen[key]} ({names[seen[key]]!r}) and {index} ({name!r}) "
                    f"have the same name once stripped and case-folded")
        seen[key] = index
    return None
