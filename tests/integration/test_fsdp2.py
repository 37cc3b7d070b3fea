"""cpo's forward under FSDP2 (`torch.distributed.fsdp.fully_shard`), two CPU processes.

accelerate only turns FSDP on for accelerator devices, and FSDP1 needs one; FSDP2 runs on a
CPU mesh, so the part of cpo that sharding could break — the chunked LM head reading
`lm_head.weight` outside the module's forward, and the packed 4D-mask layout — is checked here
against the unsharded model: same log-probs, same gradients, every parameter reached.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("fsdp2_worker.py")


@pytest.mark.distributed
def test_fsdp2_gives_the_unsharded_logps_and_gradients(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "fsdp2.json"
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
    ]
    proc = subprocess.run(
        [*launcher, str(WORKER), str(tiny_model_dir), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["world_size"] == 2
    for layout in ("packed", "pair_rows"):
        r = report[layout]
        assert r["layout_used"] == layout
        assert r["logps_fsdp"] == pytest.approx(r["logps_ref"], rel=1e-5, abs=1e-5)
        assert r["worst_rel_grad_diff"] < 1e-5
        assert r["params_without_grad"] == []
