"""`benchmarks/device_check.sh` runs green on a machine without CUDA: the CUDA parts are skipped
with the reason in its table and the CPU smoke run of the benchmark path passes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.ci
def test_device_check_runs_and_writes_one_table(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    out = tmp_path / "device_check.md"
    env = {
        **os.environ,
        "VENV": str(Path(sys.executable).parent.parent),
        "DEVICE_CHECK_OUT": str(out),
        "CPO_CACHE": str(tmp_path / "cache"),
    }
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "device_check.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = out.read_text()
    assert table.count("| check | status | seconds | result |") == 1
    if not torch.cuda.is_available():
        assert "| layout + TRL-parity tests on CUDA | skipped | 0 | no CUDA device" in table
        assert "| CPU smoke: bench_train tiny, cpo only | ok |" in table
