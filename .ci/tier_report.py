"""Summarise a tier's pytest JUnit XML: ran, passed, failed, skipped (with each reason).

``tier_report.py LABEL RESULTS.xml``: a real-webui tier; exit status 1 when a test failed or errored, when one was
skipped (there every selected test must run against the real host) or when nothing ran.
``tier_report.py --allow-skips LABEL RESULTS.xml``: the host-free tier, where CUDA-only tests skip.
``tier_report.py --total RESULTS.xml ...``: one closing line over every tier, ``total: N passed, N failed, N skipped``.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET


def outcomes(results: str) -> tuple[list[str], list[tuple[str, list[str]]], list[tuple[str, str]]]:
    cases = ET.parse(results).getroot().iter("testcase")
    passed: list[str] = []
    failed: list[tuple[str, list[str]]] = []
    skipped: list[tuple[str, str]] = []
    for case in cases:
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
        if outcome is None:
            passed.append(name)
        elif outcome.tag == "skipped":
            skipped.append((name, outcome.get("message", "").strip()))
        else:
            failed.append((name, outcome.get("message", "").strip().splitlines()[0:1]))
    return passed, failed, skipped


def report(label: str, results: str, *, allow_skips: bool = False) -> int:
    passed, failed, skipped = outcomes(results)
    ran = len(passed) + len(failed)
    print(f"{label}: {ran} ran, {len(passed)} passed, {len(failed)} failed, {len(skipped)} skipped")
    for name, message in failed:
        print(f"  FAILED  {name}: {' '.join(message)}")
    for name, reason in skipped:
        verdict = "" if allow_skips else " (unexpected: every selected test must run against the real host)"
        print(f"  SKIPPED {name}: {reason}{verdict}")
    return 1 if failed or (skipped and not allow_skips) or not ran else 0


def total(*results: str) -> int:
    counts = [tuple(map(len, outcomes(path))) for path in results]
    passed, failed, skipped = (sum(column) for column in zip(*counts, strict=True))
    print(f"total: {passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    arguments = sys.argv[1:]
    if arguments[:1] == ["--total"]:
        sys.exit(total(*arguments[1:]))
    allow = arguments[:1] == ["--allow-skips"]
    sys.exit(report(*arguments[allow:], allow_skips=allow))
