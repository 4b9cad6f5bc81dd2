"""``e2x bench realsize``: seconds to explain one detection of a torchvision detector at its own
input size, per method, in one run; the floor K x (forward + backward) of that model; the best
batch size; and, on CUDA, AMP and ``channels_last``.

The detector is ``fasterrcnn_mobilenet_v3_large_fpn`` by default (``--arch`` takes any torchvision
family E2X wraps, e.g. ``fasterrcnn_resnet50_fpn`` or ``retinanet_resnet50_fpn``) with
torchvision's 91-entry COCO head, at its native size (``min_size=800``: a 640x480 image is resized
to 800x1067). Its weights are a seeded random init of the real shape, because nothing can be
downloaded here; the cost of a forward and a backward does not depend on the weights' values. The
images are 640x480 and 500x375 synthetic photographs (colour blobs, textured boxes). The targets
are each image's two highest-scoring detections on the clean image, so the two share each E2X
forward (``explain.options.e2x.share_forward``); one row turns the sharing off.

Measured, in this order:

1. **Batch sweep.** For each batch size B, the seconds per input of one forward of B perturbed
   copies through the detector's dense view plus the backward of one target's score to the input
   (the unit of work of E2X), and the peak memory (CUDA: ``max_memory_allocated``; CPU: the
   process's peak resident set, VmHWM, reset before each size). The best B (least seconds per
   input) is used for everything after.
2. **Floor.** ``floor(method) = passes per detection x t_fb(B)``: what the method would cost if
   the detector's forward and backward were all it did. The ratio measured / floor is the
   overhead of everything else (SLIC, sampling, the per-target backwards, postprocess).
3. **Methods.** Every setting explains the same targets with one shared SLIC segmentation
   (M=200); the time is the explanation call's wall time per detection, SLIC included.

``--amp`` runs the detector under ``torch.autocast`` (bfloat16, which needs no loss scaling, so
input gradients do not underflow); its safety is checked, not assumed: the run also explains the
targets with E2X K=32 in float32 and reports the Pearson rho of the two maps. ``--channels-last``
converts the model to ``torch.channels_last``. ``--tiny`` is the CI smoke size (128 px, K=2).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from e2x_pipeline.config import E2XConfig, ExplainConfig, resolve_device
from e2x_pipeline.detectors import build_detector, coco_categories
from e2x_pipeline.detectors.base import Detector, Target
from e2x_pipeline.explain import dataset_mean, get_explainer, slic_segments
from e2x_pipeline.metrics import pearson_rho

from .common import environment, write_bench

ARCH = "fasterrcnn_mobilenet_v3_large_fpn"
GPU_TARGET_S = 0.5  # s per detection, Faster R-CNN R50 at 800 px, E2X K=32, one GPU
GPU_TARGET_ARCH = "fasterrcnn_resnet50_fpn"


@dataclass(frozen=True)
class RealSize:
    """What one run measures."""

    arch: str = ARCH
    min_size: int = 800
    sizes: tuple[tuple[int, int], ...] = ((640, 480), (500, 375))
    per_image: int = 2
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8)
    e2x_k: tuple[int, ...] = (8, 16, 32)
    lime_samples: int = 100
    smoothgrad_samples: int = 20
    sweep_repeats: int = 3
    floor_repeats: int = 6  # the floor at the chosen batch, measured again after the sweep
    amp: bool = False
    channels_last: bool = False
    segments: int = 200

    def method_settings(self) -> list[tuple[str, str, dict[str, Any], dict[str, Any]]]:
        """(label, method, ExplainConfig updates, options) of every timed setting."""
        out: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = [
            (f"e2x K={k}", "e2x", {"k": k}, {}) for k in self.e2x_k
        ]
        k_mid = self.e2x_k[len(self.e2x_k) // 2]
        out.append((f"e2x K={k_mid} unshared", "e2x", {"k": k_mid}, {"share_forward": False}))
        out.append((f"lime K={self.lime_samples}", "lime", {"lime_samples": self.lime_samples}, {}))
        out.append(("odam", "odam", {}, {}))
        n = self.smoothgrad_samples
        out.append((f"odsmoothgrad n={n}", "odsmoothgrad", {}, {"n_samples": n}))
        return out


TINY = RealSize(
    min_size=128,
    sizes=((160, 120),),
    per_image=2,
    batch_sizes=(1, 2),
    e2x_k=(2, 4),
    lime_samples=8,
    smoothgrad_samples=2,
    sweep_repeats=1,
    floor_repeats=1,
    segments=30,
)


def _image(size: tuple[int, int], seed: int) -> torch.Tensor:
    w, h = size
    g = np.random.default_rng(seed)
    coarse = torch.as_tensor(g.uniform(0.15, 0.85, size=(1, 3, 6, 8)), dtype=torch.float32)
    img = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear")[0]
    side = max(8, min(w, h) // 5)
    for _ in range(3):
        x, y = int(g.integers(0, w - side)), int(g.integers(0, h - side))
        img[:, y : y + side, x : x + side] = torch.as_tensor(g.uniform(0, 1, size=(3, 1, 1)))
    noise = torch.as_tensor(g.normal(size=(3, h, w)), dtype=torch.float32)
    return (img + 0.03 * noise).clamp(0, 1)


def _targets(det: Detector, image: torch.Tensor, per_image: int) -> list[Target]:
    d = det.detect(image.to(det.device), 0.0)[0]
    top = d.scores.argsort(descending=True)[:per_image]
    return [Target(int(d.candidates[i]), int(d.labels[i]), tuple(d.boxes[i].tolist())) for i in top]


def calibrate_norms(det: Detector, images: list[torch.Tensor]) -> int:
    """Set the batch-norm statistics of a randomly initialised detector from ``images``.

    A fresh torchvision detector in eval mode normalises with running mean 0 and variance 1, so
    its activations collapse with depth: every score is ~1/91 and the input gradient is exactly
    zero, which makes a map meaningless (the cost is the same). One forward of the backbone in
    train mode with a cumulative average (``momentum=None``) gives each layer its data's
    statistics, the usual data-dependent initialisation. Returns the number of layers set.
    """
    norms = [m for m in det.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    with torch.no_grad():
        batch, _ = det.model.transform([im.to(det.device) for im in images])
        det.model.backbone(batch.tensors)
    for m in norms:
        m.eval()
    return len(norms)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _autocast(device: torch.device, amp: bool) -> Iterator[None]:
    if not amp:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
        yield


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):  # Linux: "5" resets the peak RSS (VmHWM) of the process
        Path("/proc/self/clear_refs").write_text("5")


def _peak_mb(device: torch.device) -> float | None:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def forward_backward_seconds(
    det: Detector,
    image: torch.Tensor,
    target: Target,
    batch: int,
    repeats: int,
    amp: bool,
    backward: bool = True,
) -> tuple[float, float | None]:
    """Seconds per input of one forward of ``batch`` perturbed copies of ``image`` through the
    dense view and the backward of ``target``'s score to the input (``backward=False``: the
    forward alone, without autograd), and the peak memory (MB)."""
    dev = det.device
    x = image.to(dev)
    g = torch.Generator(device="cpu").manual_seed(0)

    def once() -> None:
        w = torch.rand(batch, 1, 1, 1, generator=g).to(dev)
        u = (w * x.unsqueeze(0)).requires_grad_(backward)
        with _autocast(dev, amp), torch.set_grad_enabled(backward):
            out = det.target_outputs(u, [target], "score")
        if backward:
            (grad,) = torch.autograd.grad(out.float().sum(), u)
            del grad

    once()  # warm-up: allocator, kernels
    _sync(dev)
    _reset_peak(dev)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        once()
        _sync(dev)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) / batch, _peak_mb(dev)


def _explain(
    det: Detector,
    method: str,
    cfg: ExplainConfig,
    seed: int,
    mean: torch.Tensor,
    opts: dict[str, Any],
    work: list[tuple[torch.Tensor, list[Target], np.ndarray, float]],
    amp: bool,
) -> tuple[float, float, int, list[np.ndarray], int]:
    """(seconds incl. SLIC, passes, detections, pixel maps, invalid explanations) of one
    setting on every image. An invalid one (ODSmoothGrad's detection lost in every noisy copy)
    still cost its passes."""
    ex = get_explainer(method, det, cfg, seed, mean=mean, **opts)
    seconds, passes, n, maps = 0.0, 0.0, 0, []
    invalid = 0
    for image, targets, seg, slic_s in work:
        _sync(det.device)
        t0 = time.perf_counter()
        with _autocast(det.device, amp):
            exps = ex.explain(image, targets, segments=seg)
        _sync(det.device)
        seconds += time.perf_counter() - t0 + slic_s
        invalid += sum(not e.valid for e in exps)
        passes += sum(e.passes for e in exps)
        n += len(exps)
        maps += [e.pixel_map for e in exps]
    return seconds, passes, n, maps, invalid


def bench_realsize(
    cfg: E2XConfig,
    out_dir: Path,
    progress: bool = True,
    size: RealSize | None = None,
    tiny: bool = False,
    **changes: Any,
) -> dict[str, Any]:
    """Sweep the batch size, measure the floor, time every setting on the same detections;
    write ``realsize.{json,md}``. ``changes`` update :class:`RealSize` (``arch``, ``amp``, ...)."""
    size = size or (TINY if tiny else RealSize())
    size = replace(size, **{k: v for k, v in changes.items() if v is not None})
    torch.manual_seed(cfg.seed)
    device = torch.device(resolve_device(cfg.device))
    det = build_detector(size.arch, coco_categories(size.arch), size.min_size, None, str(device))
    if size.channels_last:
        det.model.to(memory_format=torch.channels_last)
    images = [_image(s, seed) for seed, s in enumerate(size.sizes)]
    calibrated = calibrate_norms(det, [_image(size.sizes[0], 100 + i) for i in range(4)])
    mean = dataset_mean(images)
    work = []
    for image in images:
        t0 = time.perf_counter()
        seg = slic_segments(image, size.segments, 10.0)
        work.append((image, _targets(det, image, size.per_image), seg, time.perf_counter() - t0))
    log = print if progress else (lambda *a, **k: None)

    sweep = []
    for b in size.batch_sizes:
        try:
            s_per, peak = forward_backward_seconds(
                det, work[0][0], work[0][1][0], b, size.sweep_repeats, size.amp
            )
        except torch.OutOfMemoryError:  # the largest batch that fits ends the sweep
            torch.cuda.empty_cache()
            sweep.append({"batch": b, "seconds_per_input": None, "peak_mb": "out of memory"})
            break
        sweep.append({"batch": b, "seconds_per_input": round(s_per, 4), "peak_mb": peak})
        log(sweep[-1], flush=True)
    best = min(
        (r for r in sweep if r["seconds_per_input"] is not None),
        key=lambda r: r["seconds_per_input"],
    )
    batch = int(best["batch"])
    # the sweep's few repeats pick the batch; the floor gets its own, longer measurement (the
    # first sweep sizes pay for the allocator's first large blocks)
    t_fb, _ = forward_backward_seconds(
        det, work[0][0], work[0][1][0], batch, size.floor_repeats, size.amp
    )
    t_f, _ = forward_backward_seconds(
        det, work[0][0], work[0][1][0], batch, size.floor_repeats, size.amp, backward=False
    )
    log({"floor_forward_backward_seconds_per_input": round(t_fb, 4)}, flush=True)
    log({"forward_only_seconds_per_input": round(t_f, 4)}, flush=True)
    base = ExplainConfig(n_segments=size.segments, batch_size=batch)

    settings = size.method_settings()
    for _, method, _upd, opts in settings:  # one untimed call per method: first-use set-up
        small = base.model_copy(update={"k": 2, "lime_samples": 4})
        o = {**opts, "n_samples": 1} if method == "odsmoothgrad" else opts
        _explain(det, method, small, cfg.seed, mean, o, work[:1], size.amp)
    rows, maps = [], {}
    for label, method, upd, opts in settings:
        ecfg = base.model_copy(update=upd)
        seconds, passes, n, maps[label], invalid = _explain(
            det, method, ecfg, cfg.seed, mean, opts, work, size.amp
        )
        per_det = passes / n
        # a pass of a gradient method is a forward and a backward; of LIME a forward only
        ex = get_explainer(method, det, ecfg, **opts)
        unit = t_fb if ex.needs_gradients else t_f
        # with shared forwards the T targets of an image pay one forward per sample between
        # them: K (t_f / T + t_b) per detection, t_b = t_fb - t_f
        shared = method == "e2x" and ex.options.share_forward and size.per_image > 1
        shared_floor = per_det * (t_f / size.per_image + t_fb - t_f) if shared else None
        rows.append(
            {
                "setting": label,
                "seconds_per_detection": round(seconds / n, 3),
                "passes_per_detection": round(per_det, 1),
                "seconds_per_pass": round(seconds / passes, 4),
                "floor_seconds": round(per_det * unit, 3),
                "ratio_to_floor": round(seconds / n / (per_det * unit), 2),
                "shared_floor_seconds": round(shared_floor, 3) if shared_floor else None,
                "ratio_to_shared_floor": (
                    round(seconds / n / shared_floor, 2) if shared_floor else None
                ),
                "invalid": invalid,
            }
        )
        log(rows[-1], flush=True)
    amp_check = None
    if size.amp:  # is bfloat16 safe for the maps? the float32 maps of the largest E2X setting
        k_max = max(size.e2x_k)
        _, _, _, fp32, _ = _explain(
            det, "e2x", base.model_copy(update={"k": k_max}), cfg.seed, mean, {}, work, False
        )
        pairs = [
            (a, b)
            for a, b in zip(maps[f"e2x K={k_max}"], fp32, strict=True)
            if np.ptp(a) > 0 and np.ptp(b) > 0  # a constant map has no rho
        ]
        rhos = [pearson_rho(a, b) for a, b in pairs]
        amp_check = {
            "setting": f"e2x K={k_max}",
            "rho_amp_vs_fp32": round(float(np.mean(rhos)), 4) if rhos else None,
            "detections_compared": len(pairs),
            "detections": len(fp32),
        }
    by = {r["setting"]: r["seconds_per_detection"] for r in rows}
    k_lo, k_hi, k_mid = min(size.e2x_k), max(size.e2x_k), size.e2x_k[len(size.e2x_k) // 2]
    ratios = {
        f"lime K={size.lime_samples} / e2x K={k_lo}": round(
            by[f"lime K={size.lime_samples}"] / by[f"e2x K={k_lo}"], 2
        ),
        f"e2x K={k_hi} / odam": round(by[f"e2x K={k_hi}"] / by["odam"], 1),
        f"e2x K={k_hi} / odsmoothgrad n={size.smoothgrad_samples}": round(
            by[f"e2x K={k_hi}"] / by[f"odsmoothgrad n={size.smoothgrad_samples}"], 2
        ),
        f"e2x K={k_mid} unshared / shared": round(
            by[f"e2x K={k_mid} unshared"] / by[f"e2x K={k_mid}"], 3
        ),
    }
    result = {
        "arch": size.arch,
        "min_size": size.min_size,
        "input": " and ".join(f"{w}x{h}" for w, h in size.sizes)
        + f" images, resized by the model to {size.min_size} px (shorter side)",
        "device": str(device),
        "amp": size.amp,
        "channels_last": size.channels_last,
        "detections": sum(len(t) for _, t, _, _ in work),
        "per_image": size.per_image,
        "batch_sweep": sweep,
        "batch_size": batch,
        "forward_backward_seconds_per_input": round(t_fb, 4),
        "forward_seconds_per_input": round(t_f, 4),
        "calibrated_norm_layers": calibrated,
        "settings": rows,
        "ratios": ratios,
        "amp_check": amp_check,
        "gpu_target": _gpu_target(size, device, by),
        "size": asdict(size),
        "load_average_1_5_15_end": os.getloadavg(),
    }
    write_bench(out_dir, "realsize", result, _markdown(result))
    return result


def _gpu_target(size: RealSize, device: torch.device, by: dict[str, float]) -> dict[str, Any]:
    """The issue's GPU target: <= 0.5 s per detection, Faster R-CNN R50 at 800 px, E2X K=32."""
    applies = (
        device.type == "cuda"
        and size.arch == GPU_TARGET_ARCH
        and size.min_size >= 800
        and "e2x K=32" in by
    )
    if not applies:
        return {
            "target_s": GPU_TARGET_S,
            "measured_s": None,
            "met": None,
            "note": f"needs {GPU_TARGET_ARCH} at 800 px on CUDA with E2X K=32 "
            f"(this run: {size.arch} at {size.min_size} px on {device.type}); "
            "run bench/gpu_check.sh on a GPU machine",
        }
    return {"target_s": GPU_TARGET_S, "measured_s": by["e2x K=32"], "met": by["e2x K=32"] <= 0.5}


def _markdown(result: dict[str, Any]) -> str:
    env = environment()
    lines = [
        f"{result['arch']} with the 91-class COCO head (seeded random init of the real shape), "
        f"{result['input']}; {result['detections']} detections ({result['per_image']} per image, "
        f"sharing E2X's forwards), one SLIC (M={result['size']['segments']}) per image; "
        f"{result['device']}, AMP {'bfloat16' if result['amp'] else 'off'}, channels_last "
        f"{'on' if result['channels_last'] else 'off'}; {env['cpu_count']} CPU cores, "
        f"{env['torch_threads']} threads; load average at the end "
        f"{[round(x, 2) for x in result['load_average_1_5_15_end']]}.",
        "",
        "Batch sweep: one forward of B perturbed copies and the backward of one score to the "
        "input (E2X's unit of work), per input:",
        "",
        "| batch B | s / input | peak memory MB |",
        "|---|---|---|",
    ]
    for r in result["batch_sweep"]:
        lines.append(f"| {r['batch']} | {r['seconds_per_input']} | {r['peak_mb']} |")
    lines += [
        "",
        f"Best batch: **{result['batch_size']}** "
        f"(t_fb = {result['forward_backward_seconds_per_input']} s per forward + backward, "
        f"t_f = {result['forward_seconds_per_input']} s per forward alone); every method below "
        "runs at it. Floor = passes per detection x t_fb (x t_f for LIME, which needs no "
        "gradient); E2X's targets of one image share each forward, so its own floor is "
        "K (t_f / T + t_fb - t_f) per detection for T targets per image. The batch-norm "
        "statistics of the random init were set from 4 images "
        f"({result['calibrated_norm_layers']} layers), so scores and gradients depend on the "
        "input.",
        "",
        "| setting | s / detection | passes / detection | s / pass | floor s | ratio to floor "
        "| shared-forward floor s | ratio to it | invalid |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["settings"]:
        lines.append(
            f"| {r['setting']} | {r['seconds_per_detection']} | {r['passes_per_detection']} | "
            f"{r['seconds_per_pass']} | {r['floor_seconds']} | {r['ratio_to_floor']} | "
            f"{r.get('shared_floor_seconds') or '-'} | {r.get('ratio_to_shared_floor') or '-'} | "
            f"{r['invalid']} |"
        )
    lines += [
        "",
        "Ratios (same run): " + ", ".join(f"{k}: {v}" for k, v in result["ratios"].items()),
    ]
    if result["amp_check"]:
        a = result["amp_check"]
        lines.append(
            f"\nAMP check: {a['setting']} maps, bfloat16 vs float32: mean rho "
            f"{a['rho_amp_vs_fp32']} on the {a['detections_compared']} of {a['detections']} "
            "detections where neither map is constant."
        )
    g = result["gpu_target"]
    if g["met"] is None:
        lines.append(
            f"\nGPU target (<= {g['target_s']} s per detection): not measured: {g['note']}."
        )
    else:
        flag = "met" if g["met"] else "MISSED"
        lines.append(
            f"\nGPU target (<= {g['target_s']} s per detection, E2X K=32): {g['measured_s']} s: "
            f"**{flag}**."
        )
    return "\n".join(lines)
