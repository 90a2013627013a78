"""The GPU check (``nox -s gpu``) runs its steps end to end, here on the CPU, so it has not
rotted when a CUDA machine is finally at hand; and it refuses to pass without the device."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from study_files import ROOT, subprocess_env

SCRIPT = ROOT / "scripts" / "gpu_check.py"


def test_gpu_check_measures_every_row_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=subprocess_env(),
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["train"]) == {
        "cpu fp32",
        "device fp32",
        "device bf16",
        "device fp16",
        "device bf16 streamed",
    }
    assert set(result["range_test"]) == {"cpu fp32", "device bf16"}
    for row in [*result["train"].values(), *result["range_test"].values()]:
        assert row["samples_per_second"] > 0
    assert result["train"]["cpu fp32"]["ratio_to_cpu"] == 1.0
    assert result["study"]["workers"] == 2
    assert result["study"]["trials_per_hour"] > 0
    assert set(result["packed"]) == {"solo", "K=2"}
    assert all(row["member_samples_per_second"] > 0 for row in result["packed"].values())
    assert "device bf16" in done.stdout


def test_gpu_check_without_cuda_measures_nothing_and_exits_2(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env=subprocess_env(CUDA_VISIBLE_DEVICES=""),  # no device, on a CUDA machine too
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == "gpu_check: no CUDA device here; nothing was measured"
    assert not out.exists()
