"""``python -m sandbox``, the README's first command: it plays the whole story and cleans up."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.harness import ROOT


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> subprocess.CompletedProcess[str]:
    data_dir = tmp_path_factory.mktemp("demo")
    command = [sys.executable, "-m", "sandbox", "--once", "--port", "0", "--neeto-port", "0", "--ms-port", "0"]
    return subprocess.run(
        [*command, "--data-dir", str(data_dir)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_the_demo_finishes_and_stops_the_bridge(demo):
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "bridge stopped (exit code 0)" in demo.stdout
    pid = int(re.search(r"\(PID (\d+),", demo.stdout).group(1))
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_the_transcript_tells_the_story_on_both_sides(demo):
    lines = demo.stdout.splitlines()

    def line(pattern: str) -> int:
        """Index of the first transcript line matching ``pattern`` (order matters)."""
        found = [i for i, text in enumerate(lines) if re.search(pattern, text)]
        assert found, f"no line matches {pattern!r} in:\n{demo.stdout}"
        return found[0]

    created = line(r'^\[Teams\] +channel "1042 Vera Jones" created$')
    visitor = line(r"^\[Teams\] +1042 Vera Jones: Vera Jones \(Visitor.*\): It was due Monday$")
    ada = line(r'^\[neetoChat\] #1042 Ada Agent \(agent, via Teams\): "Sorry about that, checking now"$')
    olly_in_teams = line(r'^\[Teams\] +Olly Outsider replies in a thread of 1042 Vera Jones: "Courier says tomorrow"$')
    olly = line(r'^\[neetoChat\] #1042 Adam Admin \(agent, via Teams\): "Courier says tomorrow"$')
    close = line(r'^\[Teams\] +Ada Agent writes in 1042 Vera Jones: "/close"$')
    closed = line(r"^\[neetoChat\] #1042 closed by Ada Agent$")
    deleted = line(r'^\[Teams\] +channel "1042 Vera Jones" deleted$')
    assert created < visitor < ada < olly_in_teams < olly < close < closed < deleted
    assert "<" not in "".join(lines[created:deleted])  # post texts are shown without their HTML
