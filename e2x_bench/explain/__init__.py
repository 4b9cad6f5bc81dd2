"""``e2x bench explain``: the E2X paper's speed / quality comparison (its Fig. 2), and more.

A fixed set of detections from mining the eval split with the run's detector (TP, FP and FN,
planted-cause failures included; :func:`select_detections`) is explained by every method and
setting of the issue:

    E2X K in {8, 16, 32, 64, 128} (M=200 SLIC superpixels), LIME K in {200, 500, 2000},
    PDA at stride 2x and 4x its window, IG K=32, D-RISE N in {1000, 5000}.

Per setting: detections explained per second (wall time of the explanation calls, the shared
SLIC segmentation counted for the superpixel methods E2X and LIME); E[rho] against a LIME and a
PDA reference (Pearson's rho of pixel maps, as the paper); deletion and insertion AUC (D-RISE
score); the planted-cause pointing-game hit rate; energy in the region; and for E2X, IG and LIME,
rho after randomising the detector (Adebayo et al. 2018).

References. The paper's are LIME with 1000 SLIC segments and K=10000 samples, and conditional PDA
(stride = window, 10 samples). On 2 CPU cores they cost about a minute per image (LIME) and per
detection (PDA), so the default ("quick") size uses smaller documented references for every
detection -- LIME with :attr:`BenchSize.lime_ref` (segments, samples), PDA with stride = window
and :attr:`BenchSize.pda_ref_samples` samples -- and ALSO computes the paper's references on the
first :attr:`BenchSize.paper_images` images, reporting every setting's rho against them there and
how well the smaller references agree with them. ``--full`` runs the paper's size: 36 detections
on 18 images with the paper's references for all (hours on 2 CPU cores; minutes on a GPU).

Ratios are taken within this run (the machine's load hits all methods alike: methods are
interleaved per image). The fraction of E2X wall time spent in the model is measured by timing
every forward of the detector's dense view and every backward through it (autograd hooks at the
model's input and output, synchronised on CUDA), against the whole E2X wall time (SLIC included).

Modules: :mod:`.settings` (sizes, method settings, references), :mod:`.detections` (the fixed
set), :mod:`.timing` (the model clock, one setting on one image), :mod:`.fidelity` (the
per-detection rows, with :mod:`e2x_pipeline.metrics.rows`), :mod:`.sanity`, :mod:`.all_causes`,
:mod:`.summary`, :mod:`.targets` (the issue's targets), :mod:`.report` (plot, markdown) and
:mod:`.bench` (:func:`bench_explain`, which runs them in that order).
"""

from __future__ import annotations

from .bench import bench_explain
from .detections import GROUP_SHARE, _quotas, detection_group, select_detections
from .settings import (
    E2X_K,
    FULL,
    IG_K,
    LIME_K,
    QUICK,
    SEGMENTS,
    BenchSize,
    Setting,
    method_settings,
    reference_settings,
)
from .timing import ModelClock, Run, TimedDetector, run_setting

__all__ = [
    "E2X_K",
    "FULL",
    "GROUP_SHARE",
    "IG_K",
    "LIME_K",
    "QUICK",
    "SEGMENTS",
    "BenchSize",
    "ModelClock",
    "Run",
    "Setting",
    "TimedDetector",
    "_quotas",
    "bench_explain",
    "detection_group",
    "method_settings",
    "reference_settings",
    "run_setting",
    "select_detections",
]
