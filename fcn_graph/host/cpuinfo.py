"""What the CPU offers beyond FP32, read from the Linux CPU flags, and whether
a precision runs fast on it.

`cpu_features()` parses /proc/cpuinfo (or given text) into the set of flags;
`check_precision(precision, features)` refuses bfloat16 where the CPU has no
bfloat16 units and notes for int8 where it has no int8 dot-product units.
"""

import sys

from fcn_graph.core.errors import UserError

CPUINFO_PATH = "/proc/cpuinfo"

# Flags of units that compute in the precision natively: bfloat16 dot products
# (AVX512_BF16, AMX), int8 dot products (AVX512-VNNI, AVX-VNNI, AMX).
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")

# Without bfloat16 units, oneDNN emulates bfloat16 with FP32 arithmetic plus
# conversions: slower than FP32 itself, by this factor (the refusal quotes it).
BF16_EMULATED_SLOWDOWN = 2.4


def parse_cpu_flags(text):
    """The set of flags on the `flags` lines of cpuinfo `text` (x86; on ARM the
    line is `Features`). Empty when no such line exists."""
    flags = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return frozenset(flags)


def read_cpuinfo():
    """The text of CPUINFO_PATH; "" where it cannot be read (macOS, Windows)."""
    try:
        with open(CPUINFO_PATH, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return ""


def cpu_features(text=None):
    """The CPU's flags: parsed from `text`, else read from CPUINFO_PATH (an
    empty set where it cannot be read, as on macOS or Windows)."""
    return parse_cpu_flags(read_cpuinfo() if text is None else text)


def _first_value(text, keys):
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in keys and value.strip():
            return value.strip()
    return ""


def cpu_model_name(text=None):
    """The first `model name` of cpuinfo `text` (default: CPUINFO_PATH), e.g.
    "AMD EPYC 7B13 64-Core Processor"; "" where there is none."""
    return _first_value(read_cpuinfo() if text is None else text, ("model name",))


def cpu_vendor(text=None):
    """The first `vendor_id` of cpuinfo `text` (default: CPUINFO_PATH), e.g.
    "GenuineIntel", "AuthenticAMD"; "" where there is none."""
    return _first_value(read_cpuinfo() if text is None else text, ("vendor_id",))


# AMD's core generations by (cpu family, model range), from AMD's processor
# programming references: family 0x17 is Zen/Zen 2, 0x19 Zen 3 or Zen 4 by
# model, 0x1A Zen 5.
AMD_CORES = (
    (0x17, range(0x00, 0x30), "Zen"),
    (0x17, range(0x30, 0x100), "Zen 2"),
    (0x19, range(0x00, 0x10), "Zen 3"),
    (0x19, range(0x10, 0x20), "Zen 4"),
    (0x19, range(0x20, 0x60), "Zen 3"),
    (0x19, range(0x60, 0x80), "Zen 4"),
    (0x19, range(0xA0, 0xB0), "Zen 4"),
    (0x1A, range(0x00, 0x100), "Zen 5"),
)


def _number(text):
    """The decimal number cpuinfo writes (`cpu family`, `model`), or None."""
    try:
        return int(text, 10)
    except ValueError:
        return None


def cpu_kind(text=None):
    """The CPU kind the project's figures are kept by, from cpuinfo `text`
    (default: CPUINFO_PATH): the AMD core generation (`AMD_CORES`, e.g. "AMD
    Zen 4"), or the vendor with the units that decide the engines' choices
    (e.g. "Intel, AVX-512 with AMX"); "" where there is nothing to read."""
    text = read_cpuinfo() if text is None else text
    vendor, features = cpu_vendor(text), cpu_features(text)
    if vendor == "AuthenticAMD":
        family = _number(_first_value(text, ("cpu family",)))
        model = _number(_first_value(text, ("model",)))
        for core_family, models, name in AMD_CORES:
            if family == core_family and model in models:
                return f"AMD {name}"
    name = {"AuthenticAMD": "AMD", "GenuineIntel": "Intel"}.get(vendor, vendor)
    units = ("AVX-512" if "avx512f" in features else "AVX2" if "avx2" in features
             else "no AVX2" if "sse2" in features else "")
    if units and "amx_tile" in features:
        units += " with AMX"
    return ", ".join(part for part in (name, units) if part)


def cpu_label(text=None):
    """The model name with the kind (`cpu_kind`), e.g. "AMD EPYC (AMD Zen 4)",
    as reports name the CPU of their figures."""
    text = read_cpuinfo() if text is None else text
    model, kind = cpu_model_name(text) or "unknown CPU", cpu_kind(text)
    return f"{model} ({kind})" if kind else model


def has_bf16_units(features):
    return any(flag in features for flag in BF16_FLAGS)


def has_int8_units(features):
    return any(flag in features for flag in INT8_FLAGS)


def check_precision(precision, features=None, *, warn=None, setting="--precision",
                    instead="use --precision float32 (or int8)"):
    """Raise a UserError for `--precision bfloat16` on a CPU without bfloat16
    units (`features`: a set of cpuinfo flags, default `cpu_features()`); for
    `--precision int8` without int8 dot-product units, call `warn(message)`
    (default: print to stderr), a note that the weights keep to 7 bits, and go
    on. Returns the flags found that serve the precision. `setting` and `instead` name the
    flag or config key in the messages, and what to do instead."""
    if precision not in ("bfloat16", "int8"):
        return ()
    features = cpu_features() if features is None else features
    if not features:
        # No flags to go by (no /proc/cpuinfo): nothing is refused.
        return ()
    if precision == "bfloat16":
        found = tuple(flag for flag in BF16_FLAGS if flag in features)
        if not found:
            raise UserError(f"{setting} bfloat16: this CPU has no bfloat16 units (no "
                            f"{' or '.join(BF16_FLAGS)} in {CPUINFO_PATH}); emulated bfloat16 "
                            f"runs about {BF16_EMULATED_SLOWDOWN}x slower than float32, so "
                            f"{instead}")
        return found
    found = tuple(flag for flag in INT8_FLAGS if flag in features)
    if not found:
        message = (f"note: --precision int8: this CPU has no int8 dot-product units (no "
                   f"{', '.join(INT8_FLAGS)} in {CPUINFO_PATH}), so the weights keep to 7 "
                   "bits; measured cost on trained models: docs/performance.md#int8-accuracy")
        if warn is None:
            print(message, file=sys.stderr)
        else:
            warn(message)
    return found
