"""scripts/run-tests' closing time table (devtools/timetable.py)."""

from __future__ import annotations

import os
import subprocess
import sys

from devtools.timetable import Phase, CaseTime, load, parse_junit, parse_phases, render

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="0" failures="1" skipped="1" tests="4" time="99.0">
<testcase classname="tests.e2e.test_vm_jobs" name="test_scancel" time="61.250" />
<testcase classname="tests.e2e.test_vm_jobs" name="test_limit[a]" time="3.5"><failure message="x">x</failure></testcase>
<testcase classname="tests.e2e.test_shares" name="test_skip" time="0.01"><skipped message="no" /></testcase>
<testcase classname="tests.test_docs" name="test_err" time="1"><error message="e">e</error></testcase>
</testsuite></testsuites>
"""


def test_junit_cases_become_tests_with_outcomes():
    tests = parse_junit(JUNIT, "22.05")
    assert tests[0] == CaseTime("22.05", "tests/e2e/test_vm_jobs::test_scancel", 61.25, "passed")
    assert [t.outcome for t in tests] == ["passed", "failed", "skipped", "error"]


def test_phases_skip_malformed_lines():
    assert parse_phases("install\t12.5\tok\nbroken line\nguests\t3\tfailed (1)\n") == [
        Phase("install", 12.5, "ok"), Phase("guests", 3.0, "failed (1)")]


def test_render_ranks_the_slowest_across_labels_and_counts_per_label():
    tests = parse_junit(JUNIT, "22.05") + [CaseTime("24.11", "tests/e2e/x::t", 100.0, "passed")]
    text = render([Phase("install", 65, "ok"), Phase("total", 3725, "ok")], tests, slowest=2)
    lines = text.splitlines()
    assert any(line.startswith("install") and "1:05" in line for line in lines)
    assert any(line.startswith("total") and "62:05" in line for line in lines)
    assert "tests [22.05]: 1 error, 1 failed, 1 passed, 1 skipped" in text
    slow = lines[lines.index("-- the 2 slowest tests (setup + call + teardown)") + 1:]
    assert [line.split()[-1] for line in slow] == ["tests/e2e/x::t", "tests/e2e/test_vm_jobs::test_scancel"]


def test_the_command_reads_a_report_dir(tmp_path):
    (tmp_path / "phases.tsv").write_text("install\t1\tok\n")
    (tmp_path / "22.05.xml").write_text(JUNIT)
    (tmp_path / "broken.xml").write_text("<testsuites>")
    phases, tests = load(str(tmp_path))
    assert len(phases) == 1 and len(tests) == 4
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-m", "devtools.timetable", str(tmp_path), "--slowest", "1"],
                          cwd=repo, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "test_scancel" in proc.stdout and "test_limit" not in proc.stdout
    assert "broken.xml unreadable" in proc.stderr
