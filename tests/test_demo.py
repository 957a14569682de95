"""`augment demo` as a newcomer runs it: one process, no servers, and its own quality line at the end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import REPO

pytestmark = pytest.mark.slow


def test_the_demo_trains_generates_and_prints_its_quality(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("AUGMENT_")}
    result = subprocess.run(
        [sys.executable, "-m", "producer.cli", "demo", "--out", str(tmp_path / "out"), "--dataset", "fake",
         "--per-class", "64", "--steps", "4", "--count", "30", "--quality-steps", "30"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=280, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    plan = next(line for line in result.stderr.splitlines() if line.startswith("demo: expected to take about "))
    assert "(budget 5m00s: GAN " in plan and "teacher" in plan
    assert "labelled fake images (64 per class) in. A teacher of 3 classifiers" in result.stderr
    assert "demo: done in " in result.stderr and "read the shards  : " in result.stderr
    quality_line = next(line for line in result.stderr.splitlines() if line.startswith("demo: quality: FID "))
    for part in ("precision", "recall", "label accuracy", "CAS"):
        assert part in quality_line
    manifests = list((tmp_path / "out" / "synthetic").glob("*/manifest.json"))
    assert len(manifests) == 1 and json.loads(manifests[0].read_text())["spec"]["count"] == 30
    assert list((tmp_path / "out" / "reports").glob("*/report.md"))
