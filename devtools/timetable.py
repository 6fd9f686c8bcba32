"""The time table that ends scripts/run-tests: where the run's time went.

Phases come from a tab-separated file that scripts/run-tests appends to (`name<TAB>seconds<TAB>status`);
tests from pytest's JUnit XML reports (one per pytest run, named `<label>.xml`: the label is the flavour
or tier). A test's time is pytest's junit time: setup + call + teardown, so a session fixture's start-up
(a cluster coming up) counts to the first test that uses it.

    python -m devtools.timetable REPORT_DIR [--slowest 20]
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass


@dataclass(frozen=True)
class Phase:
    name: str
    seconds: float
    status: str


@dataclass(frozen=True)
class CaseTime:
    label: str
    test: str
    seconds: float
    outcome: str


def parse_phases(text: str) -> list[Phase]:
    phases = []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) == 3:
            phases.append(Phase(parts[0], float(parts[1]), parts[2]))
    return phases


def _outcome(case: ET.Element) -> str:
    for tag in ("failure", "error", "skipped"):
        if case.find(tag) is not None:
            return {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
    return "passed"


def parse_junit(text: str, label: str) -> list[CaseTime]:
    root = ET.fromstring(text)
    tests = []
    for case in root.iter("testcase"):
        module = case.get("classname", "").replace(".", "/")
        tests.append(CaseTime(label, f"{module}::{case.get('name', '?')}", float(case.get("time", 0)),
                              _outcome(case)))
    return tests


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes:3d}:{secs:02d}"


def render(phases: list[Phase], tests: list[CaseTime], slowest: int = 20) -> str:
    lines = ["== time table", f"{'phase':<44} {'m:ss':>6}  status"]
    for phase in phases:
        lines.append(f"{phase.name:<44} {_clock(phase.seconds):>6}  {phase.status}")
    by_label: dict[str, list[CaseTime]] = {}
    for t in tests:
        by_label.setdefault(t.label, []).append(t)
    for label, items in sorted(by_label.items()):
        counts: dict[str, int] = {}
        for t in items:
            counts[t.outcome] = counts.get(t.outcome, 0) + 1
        summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        lines.append(f"  tests [{label}]: {summary}; sum of test times {_clock(sum(t.seconds for t in items)).strip()}")
    ranked = sorted(tests, key=lambda t: t.seconds, reverse=True)[:slowest]
    if ranked:
        lines.append(f"-- the {len(ranked)} slowest tests (setup + call + teardown)")
        for t in ranked:
            lines.append(f"{t.seconds:8.1f}s  {t.label:<10} {t.outcome:<8} {t.test}")
    return "\n".join(lines)


def load(report_dir: str) -> tuple[list[Phase], list[CaseTime]]:
    phases: list[Phase] = []
    path = os.path.join(report_dir, "phases.tsv")
    if os.path.exists(path):
        with open(path) as fh:
            phases = parse_phases(fh.read())
    tests: list[CaseTime] = []
    for xml in sorted(glob.glob(os.path.join(report_dir, "*.xml"))):
        label = os.path.basename(xml)[:-len(".xml")]
        try:
            with open(xml) as fh:
                tests += parse_junit(fh.read(), label)
        except ET.ParseError as exc:
            print(f"timetable: {xml} unreadable ({exc}); its tests are not in the table", file=sys.stderr)
    return phases, tests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report_dir")
    parser.add_argument("--slowest", type=int, default=20)
    args = parser.parse_args(argv)
    phases, tests = load(args.report_dir)
    print(render(phases, tests, args.slowest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
