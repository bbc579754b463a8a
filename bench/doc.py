"""docs/performance.md's results, written by the suite from a run.

Each CPU kind has one section, between two marker lines that name it:

    <!-- suite report: AMD EPYC (avx512f avx512_bf16 avx512_vnni) -->
    ### AMD EPYC (avx512f avx512_bf16 avx512_vnni), suite run 2026-12-07 01:02 UTC
    ```text
    (the suite's printed report)
    ```
    <!-- end of suite report -->

`write_doc` replaces the section of the run's CPU kind, or adds one at the end
of the "## Results per CPU kind" part, and leaves the rest of the file as it
is. The CPU kind is the model name and the flags that decide the engines and
kernels (`bench.report.format_cpu` lists them), so two CPUs of one model name
with different units get sections of their own.
"""

import os
import re

from fcn_graph.core.errors import UserError
from fcn_graph.core.fileio import atomic_write

RESULTS_HEADING = "## Results per CPU kind"
BEGIN = "<!-- suite report: {kind} -->"
END = "<!-- end of suite report -->"


def section_label(results):
    """'KIND: MODEL (flag flag ...)' of a suite results dict (without KIND
    where the run did not record it)."""
    header = results.get("header") or {}
    machine = header.get("machine") or {}
    model = machine.get("cpu") or header.get("cpu_model") or "unknown CPU"
    flags = " ".join(machine.get("features") or []) or "no AVX-512, VNNI, bf16 or AMX"
    kind = f"{machine['kind']}: " if machine.get("kind") else ""
    return f"{kind}{model} ({flags})"


def section(results, report_text):
    """The markdown section of one run: markers, caption, the report as text."""
    kind = section_label(results)
    started = str(results.get("suite_started_utc", "?")).removesuffix("Z").replace("T", " ")
    return (f"{BEGIN.format(kind=kind)}\n### {kind}, suite run {started} UTC\n\n"
            f"```text\n{report_text.rstrip()}\n```\n{END}\n")


def replace_section(text, results, report_text):
    """`text` (the whole document) with the run's section put in place."""
    if RESULTS_HEADING not in text:
        raise UserError(f"expected a line {RESULTS_HEADING!r} in the document, found none")
    new = section(results, report_text)
    begin = BEGIN.format(kind=section_label(results))
    pattern = re.compile(re.escape(begin) + r"\n.*?" + re.escape(END) + r"\n", re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: new, text, count=1)
    start = text.index(RESULTS_HEADING) + len(RESULTS_HEADING)
    following = re.compile(r"^## ", re.M).search(text, start)
    end = following.start() if following else len(text)
    body = text[:end].rstrip("\n") + "\n\n" + new
    return body + ("\n" + text[end:] if following else "")


def write_doc(path, results, report_text):
    """Put the run's section into the markdown file at `path`, atomically."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"--write-doc {path}: cannot read it "
                        f"({getattr(err, 'strerror', None) or err})") from None
    new = replace_section(text, results, report_text)
    try:
        with atomic_write(path) as temporary, open(temporary, "w", encoding="utf-8") as handle:
            handle.write(new)
    except OSError as err:
        raise UserError(f"--write-doc {path}: cannot write ({err.strerror})") from None
    return os.path.abspath(path)
