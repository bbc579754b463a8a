"""bench.doc: the suite's report put into docs/performance.md, one section per CPU kind."""

import json

import pytest

from bench import doc, suite
from fcn_graph.core.errors import UserError, run_cli

DOCUMENT = ("# Performance\n\n## Method\n\nHow it is measured.\n\n"
            f"{doc.RESULTS_HEADING}\n\nOne section per CPU kind.\n\n## API\n\nThe end.\n")


def _results(model, features, started="2026-12-07 01:02"):
    return {"suite_started_utc": started, "goals": [],
            "header": {"cpu_model": model, "machine": {"cpu": model, "features": features}}}


def test_a_new_kind_goes_at_the_end_of_the_results_part():
    zen4 = _results("AMD EPYC", ["avx512f", "avx512_bf16"])
    text = doc.replace_section(DOCUMENT, zen4, "report one")
    head, tail = text.split("## API")
    assert head.startswith(DOCUMENT.split("## API")[0].rstrip("\n"))
    assert "<!-- suite report: AMD EPYC (avx512f avx512_bf16) -->" in head
    assert "### AMD EPYC (avx512f avx512_bf16), suite run 2026-12-07 01:02 UTC" in head
    assert "```text\nreport one\n```" in head
    assert tail == "\n\nThe end.\n"


def test_a_second_run_replaces_its_kind_and_keeps_the_others():
    zen4 = _results("AMD EPYC", ["avx512f"])
    zen3 = _results("AMD EPYC", [])   # one model name, another kind of CPU
    text = doc.replace_section(DOCUMENT, zen4, "zen4 first")
    text = doc.replace_section(text, zen3, "zen3 only")
    again = doc.replace_section(text, _results("AMD EPYC", ["avx512f"], "2026-12-08 09:00"),
                                "zen4 second")
    assert "zen4 first" not in again and "zen4 second" in again and "zen3 only" in again
    assert again.count(doc.END) == 2
    # everything outside the replaced section is unchanged
    assert again.replace(doc.section(_results("AMD EPYC", ["avx512f"], "2026-12-08 09:00"),
                                     "zen4 second"), "") == \
        text.replace(doc.section(zen4, "zen4 first"), "")


def test_a_document_without_the_results_heading_is_refused():
    with pytest.raises(UserError, match="## Results per CPU kind"):
        doc.replace_section("# Performance\n", _results("x", []), "r")


def test_the_suite_writes_an_earlier_report_into_the_doc(tmp_path, capsys):
    results = _results("Intel(R) Xeon(R) Processor", ["amx_tile"])
    results["header"]["machine"].update(cores=2, bfloat16="yes", int8="yes")
    report = tmp_path / "suite.json"
    report.write_text(json.dumps(results))
    page = tmp_path / "performance.md"
    page.write_text(DOCUMENT)
    assert run_cli(suite.main, ["--from-report", str(report), "--write-doc", str(page)],
                   prog="bench/suite.py") == 0
    printed = capsys.readouterr().out
    written = page.read_text()
    assert "Intel(R) Xeon(R) Processor (amx_tile)" in written
    assert printed.strip() in written   # the printed report, as printed


@pytest.mark.parametrize("content, expected", [
    ("", "cannot read a suite report"),
    ("[1, 2]", "not a report the suite wrote"),
    ('{"goals": []}', "not a report the suite wrote"),
])
def test_a_report_that_is_not_one_is_one_line(tmp_path, capsys, content, expected):
    report = tmp_path / "suite.json"
    report.write_text(content)
    assert run_cli(suite.main, ["--from-report", str(report)], prog="bench/suite.py") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
