"""Sizes of the explanation benchmark and the method settings it compares (the points of Fig. 2)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from e2x_pipeline.config import E2XConfig

from .msdrise import available as msdrise_available


@dataclass(frozen=True)
class BenchSize:
    """How big the run is. ``QUICK`` fits ~20 min on 2 CPU cores; ``FULL`` is the paper's size."""

    name: str
    images: int  # images in the fixed set; detections = images * per_image
    per_image: int = 2
    steps: int = 20  # deletion / insertion steps
    lime_ref: tuple[int, int] = (500, 2500)  # (SLIC segments, samples) of the all-detection ref
    pda_ref_samples: int = 2  # PDA reference: stride = window, this many samples
    paper_images: int = 1  # first images of the set that also get the paper's references
    pda_stride_mults: tuple[int, ...] = (4, 8)  # PDA settings: stride = this x window
    drise: tuple[int, ...] = (1000, 5000)
    cascade_methods: tuple[str, ...] = ("e2x K=32", "ig K=32")  # full cascade
    full_random_methods: tuple[str, ...] = ("lime K=500",)  # full randomisation only
    all_cause_failures: bool = True  # E2X K=32 hit rate on every planted-cause failure too


QUICK = BenchSize("quick", images=6)
FULL = BenchSize(
    "full",
    images=18,
    steps=32,
    lime_ref=(1000, 10000),
    pda_ref_samples=10,
    paper_images=18,
    pda_stride_mults=(1, 2, 4),
    full_random_methods=("lime K=500", "drise N=1000"),
)
E2X_K = (8, 16, 32, 64, 128)
LIME_K = (200, 500, 2000)
IG_K = 32
SEGMENTS = 200  # M of the compared methods


@dataclass(frozen=True)
class Setting:
    """One method at one setting: a point of Fig. 2."""

    label: str
    method: str
    group: str
    cfg: dict[str, Any] = field(default_factory=dict)  # ExplainConfig updates
    options: dict[str, Any] = field(default_factory=dict)  # explainer keyword settings
    superpixels: bool = False  # uses the shared M=200 SLIC: its time counts
    pda_stride_mult: int | None = None  # PDA stride = this x the target's window
    segments: int | None = None  # its own SLIC with this many segments (LIME references)
    seed_offset: int = 0


def method_settings(size: BenchSize) -> list[Setting]:
    out = [Setting(f"e2x K={k}", "e2x", "E2X", {"k": k}, superpixels=True) for k in E2X_K]
    out += [
        Setting(f"lime K={k}", "lime", "LIME", {"lime_samples": k}, superpixels=True)
        for k in LIME_K
    ]
    out += [
        Setting(f"pda stride={m}w", "pda", "PDA", options={"n_samples": 10}, pda_stride_mult=m)
        for m in size.pda_stride_mults
    ]
    out.append(Setting(f"ig K={IG_K}", "ig", "IG", {"k": IG_K}))
    out += [Setting(f"drise N={n}", "drise", "D-RISE", {"drise_masks": n}) for n in size.drise]
    # the cheap end: one backward per detection (ODAM), n noisy backwards (ODSmoothGrad)
    out.append(Setting("odam relu", "odam", "ODAM"))
    out.append(Setting("odam signed", "odam", "ODAM", options={"relu": False}))
    out.append(Setting("odsmoothgrad n=20", "odsmoothgrad", "ODSmoothGrad"))
    # E2X's speed and reference variants (issue 19 (a), (b)): fewer, better-spread levels; the
    # zero (black) reference that the deletion metric removes pixels to; no shared forwards
    for k, levels in (
        (4, "permuted_linspace"),
        (4, "sobol"),
        (8, "sobol"),
        (8, "permuted_midpoint"),
    ):
        label = f"e2x K={k}" + ("" if levels == "permuted_linspace" else f" {levels}")
        opts = {} if levels == "permuted_linspace" else {"levels": levels}
        out.append(Setting(label, "e2x", "E2X", {"k": k}, opts, superpixels=True))
    out.append(
        Setting(
            "e2x K=16 ref=zeros", "e2x", "E2X", {"k": 16, "reference": "zeros"}, superpixels=True
        )
    )
    out.append(
        Setting(
            "e2x K=16 unshared", "e2x", "E2X", {"k": 16}, {"share_forward": False}, superpixels=True
        )
    )
    if msdrise_available():  # Microsoft's D-RISE, the real peer (installed by make setup)
        out.append(Setting("msdrise N=1000", "msdrise", "D-RISE", {"drise_masks": 1000}))
    return out


def reference_settings(size: BenchSize, cfg: E2XConfig) -> dict[str, Setting]:
    """The all-detection references and the paper's (subset) references."""
    m = cfg.metrics
    paper_lime = (m.reference_lime_segments, m.reference_lime_samples)
    refs = {
        "lime_ref": _lime_ref("ref:lime", *size.lime_ref),
        "pda_ref": _pda_ref("ref:pda", size.pda_ref_samples),
        "paper_lime_ref": _lime_ref("paper-ref:lime", *paper_lime),
        "paper_pda_ref": _pda_ref("paper-ref:pda", m.reference_pda_samples),
    }
    return refs


def paper_refs_are_small_refs(size: BenchSize, cfg: E2XConfig) -> bool:
    """Are the all-detection references the paper's own (then they are not run twice)?"""
    m = cfg.metrics
    paper_lime = (m.reference_lime_segments, m.reference_lime_samples)
    return size.lime_ref == paper_lime and size.pda_ref_samples == m.reference_pda_samples


def _lime_ref(label: str, segments: int, samples: int) -> Setting:
    return Setting(
        f"{label} M={segments} K={samples}",
        "lime",
        "reference",
        {"lime_samples": samples, "n_segments": segments},
        segments=segments,
        seed_offset=1,
    )


def _pda_ref(label: str, samples: int) -> Setting:
    return Setting(
        f"{label} stride=w n={samples}",
        "pda",
        "reference",
        options={"n_samples": samples},
        pda_stride_mult=1,
        seed_offset=1,
    )


# one small untimed call per method before timing, so no timed call pays for first-use set-up
WARM_UP = (
    Setting("w", "e2x", "", {"k": 4}),
    Setting("w", "lime", "", {"lime_samples": 16}),
    Setting("w", "pda", "", options={"n_samples": 1}, pda_stride_mult=16),
    Setting("w", "ig", "", {"k": 4}),
    Setting("w", "drise", "", {"drise_masks": 16}),
    Setting("w", "odam", ""),
    Setting("w", "odsmoothgrad", "", options={"n_samples": 2}),
) + ((Setting("w", "msdrise", "", {"drise_masks": 16}),) if msdrise_available() else ())


def unique_settings(settings: Any) -> list[Setting]:
    """``settings`` without repeated labels (first one kept)."""
    seen: dict[str, Setting] = {}
    for s in settings:
        seen.setdefault(s.label, s)
    return list(seen.values())
