"""The real-size bench: batch-norm calibration makes a random-init torchvision detector's maps
depend on its input, and ``bench/gpu_check.sh --tiny`` (the GPU script's CPU smoke size) writes
every row, the floor, the sharing ratio and the AMP check."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from e2x_bench.realsize import ARCH, TINY, _image, _targets, calibrate_norms
from e2x_pipeline.detectors import build_detector, coco_categories

ROOT = Path(__file__).resolve().parents[1]


def test_calibrated_random_detector_depends_on_its_input():
    torch.manual_seed(0)
    det = build_detector(ARCH, coco_categories(ARCH), TINY.min_size, None, "cpu")
    image = _image(TINY.sizes[0], 0)

    def scores_and_gradient() -> tuple[torch.Tensor, float]:
        scores = det.detect(image, 0.0)[0].scores
        u = image.unsqueeze(0).clone().requires_grad_(True)
        (g,) = torch.autograd.grad(det.target_outputs(u, _targets(det, image, 1)).sum(), u)
        return scores, float(g.abs().max())

    before, _ = scores_and_gradient()
    assert float(before.std()) < 1e-3  # the fresh init: every score ~1/91
    assert calibrate_norms(det, [_image(TINY.sizes[0], s) for s in (100, 101)]) > 10
    after, grad = scores_and_gradient()
    assert float(after.std()) > 10 * float(before.std()) and grad > 1e-4


def test_gpu_check_script_smoke_on_cpu(tmp_path):
    exe = shutil.which("e2x", path=str(Path(sys.executable).parent)) or shutil.which("e2x")
    assert exe, "the e2x console script is not installed"
    env = {**os.environ, "E2X": exe, "PYTHON": sys.executable}
    out = tmp_path / "gpu"
    proc = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--tiny", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ratio to floor" in proc.stdout and "AMP check" in proc.stdout
    r = json.loads((out / "realsize.json").read_text())
    labels = [row["setting"] for row in r["settings"]]
    assert labels == [
        "e2x K=2",
        "e2x K=4",
        "e2x K=4 unshared",
        "lime K=8",
        "odam",
        "odsmoothgrad n=2",
    ]
    assert r["amp"] and r["channels_last"] and r["detections"] == 2
    by = {row["setting"]: row for row in r["settings"]}
    assert (
        by["e2x K=4"]["passes_per_detection"] == 4 == by["e2x K=4 unshared"]["passes_per_detection"]
    )
    assert by["odam"]["passes_per_detection"] == 1
    for row in r["settings"]:  # the floor is passes x the measured unit, so a positive ratio
        assert row["floor_seconds"] > 0 and row["ratio_to_floor"] > 0
    assert r["batch_size"] in (1, 2) and r["forward_backward_seconds_per_input"] > 0
    assert r["amp_check"]["detections"] == 2
    assert r["gpu_target"]["met"] is None  # not a GPU run: never reported as met or missed
