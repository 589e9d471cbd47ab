"""The crash points of the fault suite: inert unless named, exact when named, loud when misspelled."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from oms_runtime import faults


def _run(code: str, spec: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != faults.ENV}
    if spec is not None:
        env[faults.ENV] = spec
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


def test_a_point_is_named_with_its_probability_and_certain_when_none_is_given():
    assert faults.parse("consumer.after_commit:0.05, relay.after_publish") == {
        "consumer.after_commit": 0.05,
        "relay.after_publish": 1.0,
    }
    assert faults.parse("") == {}


@pytest.mark.parametrize(
    "spec", ["consumer.after_comit:0.5", "relay.after_publish:often", "relay.after_publish:1.5", "x"]
)
def test_a_misspelled_point_or_an_impossible_probability_is_refused(spec: str):
    with pytest.raises(ValueError, match=faults.ENV):
        faults.parse(spec)


def test_without_the_variable_nothing_is_armed_and_reaching_a_point_does_nothing():
    done = _run("from oms_runtime import faults; assert not faults.ARMED; faults.reach('consumer.after_commit')", None)
    assert done.returncode == 0, done.stderr


def test_a_named_point_ends_the_process_there_with_137_and_says_so():
    done = _run(
        "from oms_runtime import faults\n"
        "assert faults.ARMED\n"
        "faults.reach('relay.after_publish')  # not named: goes on\n"
        "faults.reach('consumer.after_commit')\n"
        "raise SystemExit('still running after the crash point')\n",
        "consumer.after_commit:1",
    )
    assert done.returncode == faults.EXIT_STATUS
    assert "oms-fault: crash at consumer.after_commit" in done.stderr


def test_a_point_with_probability_zero_never_fires():
    done = _run(
        "from oms_runtime import faults\nfor _ in range(1000): faults.reach('consumer.after_commit')",
        "consumer.after_commit:0",
    )
    assert done.returncode == 0, done.stderr


def test_a_misspelled_variable_stops_the_process_at_import():
    done = _run("import oms_runtime.faults", "consumer.after_comit:0.5")
    assert done.returncode != 0 and "unknown crash point" in done.stderr
