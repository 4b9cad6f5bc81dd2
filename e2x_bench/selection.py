"""Selection strategies people already use, to compare E2X's repair set against at equal budgets.

Each returns the file names of ``budget`` pool images, best first:

* :func:`select_random` -- uniform without replacement (seeded).
* :func:`select_least_confidence` -- uncertainty sampling for detection (Brust et al. 2018):
  a detection with score ``s`` has uncertainty ``1 - |2s - 1|`` (largest at the decision
  boundary s = 0.5); an image scores the maximum over its detections above ``min_score``.
* :func:`select_similar_images` -- whole-image embedding similarity to the failure images, what
  tools like Lightly offer: the image embedding is the global average of each backbone level,
  L2-normalised per level and concatenated; a pool image scores its highest cosine similarity to
  any image that holds an explained failure (scikit-learn ``NearestNeighbors``, the same index
  FiftyOne Brain's sklearn backend uses).
* :func:`select_e2x` -- the repair stage's mode-aware selection at another budget.

:data:`STRATEGIES` is their registry: name -> ``strategy(inputs, budget, seed)``, each taking a
:class:`SelectionInputs` (what any strategy may use; the model-based rankings are computed once,
on first use, and cut to each budget).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.neighbors import NearestNeighbors

from e2x_pipeline.data.coco import CocoDataset, load_image
from e2x_pipeline.detectors.base import Detector
from e2x_pipeline.inference import detect_dataset
from e2x_pipeline.repair import select_repair_set


def _names(pool: CocoDataset, ids: Sequence[int]) -> list[str]:
    return [pool.images[int(i)]["file_name"] for i in ids]


def select_random(pool: CocoDataset, budget: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    ids = rng.choice(np.array(pool.image_ids), size=min(budget, len(pool.images)), replace=False)
    return _names(pool, ids)


def least_confidence_scores(
    detector: Detector, pool: CocoDataset, min_score: float = 0.05
) -> pd.Series:
    """Per pool image, max over detections (score >= ``min_score``) of ``1 - |2s - 1|``."""
    dets = detect_dataset(detector, pool, min_score, progress=False)
    scores = {}
    for i in pool.image_ids:
        d = dets.get(i)
        s = d.scores.cpu() if d is not None and len(d) else torch.zeros(0)
        scores[i] = float((1 - (2 * s - 1).abs()).max()) if len(s) else 0.0
    return pd.Series(scores)


def select_least_confidence(detector: Detector, pool: CocoDataset, budget: int) -> list[str]:
    s = least_confidence_scores(detector, pool)
    order = sorted(s.index, key=lambda i: (-s[i], i))
    return _names(pool, order[:budget])


@torch.no_grad()
def image_embeddings(detector: Detector, paths: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """``[n, D]`` whole-image embeddings (module doc)."""
    out = []
    for start in range(0, len(paths), batch_size):
        images = torch.stack([load_image(p) for p in paths[start : start + batch_size]])
        maps = detector.feature_maps(images)
        parts = [F.normalize(m.mean(dim=(-2, -1)), dim=1) for m in maps]
        out.append((torch.cat(parts, 1) / len(parts) ** 0.5).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def select_similar_images(
    detector: Detector, pool: CocoDataset, failure_images: Sequence[str], budget: int
) -> list[str]:
    """Pool images most similar (cosine) to any failure image (module doc)."""
    pool_emb = image_embeddings(detector, [str(pool.image_path(i)) for i in pool.image_ids])
    fail_emb = image_embeddings(detector, list(failure_images))
    index = NearestNeighbors(n_neighbors=1, metric="cosine", algorithm="brute").fit(fail_emb)
    dist, _ = index.kneighbors(pool_emb)
    sim = 1.0 - dist[:, 0]
    order = sorted(range(len(sim)), key=lambda k: (-sim[k], pool.image_ids[k]))
    return _names(pool, [pool.image_ids[k] for k in order[:budget]])


def select_e2x(
    scores: pd.DataFrame, modes: pd.DataFrame, pool: CocoDataset, budget: int, allocation: str
) -> list[str]:
    """The repair stage's selection (per-mode quotas over match scores) at ``budget``."""
    sizes = {int(m.mode_id): int(m.size) for m in modes.itertuples()}
    chosen = select_repair_set(scores, sizes, budget, allocation)
    return _names(pool, chosen["image_id"].tolist())


@dataclass
class SelectionInputs:
    """What a selection strategy may use: the detector, the pool, the images that hold an
    explained failure, and the repair stage's match scores and failure modes."""

    detector: Detector
    pool: CocoDataset
    failure_images: list[str]
    scores: pd.DataFrame  # the repair stage's match scores (pool image x failure mode)
    modes: pd.DataFrame  # the failure modes (mode_id, size)
    allocation: str  # repair.allocation

    @cached_property
    def uncertainty_order(self) -> list[str]:
        """Every pool image, most uncertain first (:func:`select_least_confidence`)."""
        return select_least_confidence(self.detector, self.pool, len(self.pool.images))

    @cached_property
    def similarity_order(self) -> list[str]:
        """Every pool image, most similar to any failure image first (module doc)."""
        return select_similar_images(
            self.detector, self.pool, self.failure_images, len(self.pool.images)
        )

    def rank(self) -> None:
        """Compute the model-based rankings now (so that their time can be measured apart)."""
        _ = self.uncertainty_order, self.similarity_order


Strategy = Callable[[SelectionInputs, int, int], list[str]]  # (inputs, budget, seed) -> files


def _e2x(inputs: SelectionInputs, budget: int, seed: int) -> list[str]:
    return select_e2x(inputs.scores, inputs.modes, inputs.pool, budget, inputs.allocation)


def _random(inputs: SelectionInputs, budget: int, seed: int) -> list[str]:
    return select_random(inputs.pool, budget, seed)


def _least_confidence(inputs: SelectionInputs, budget: int, seed: int) -> list[str]:
    return inputs.uncertainty_order[:budget]


def _similarity(inputs: SelectionInputs, budget: int, seed: int) -> list[str]:
    return inputs.similarity_order[:budget]


# name -> strategy; the order is the order of the benchmark's tables and plots
STRATEGIES: dict[str, Strategy] = {
    "e2x": _e2x,
    "random": _random,
    "least_confidence": _least_confidence,
    "similarity": _similarity,
}


def get_strategy(name: str) -> Strategy:
    """The strategy registered as ``name`` (a KeyError lists the registered ones)."""
    if name not in STRATEGIES:
        raise KeyError(f"unknown selection strategy {name!r}; registered: {', '.join(STRATEGIES)}")
    return STRATEGIES[name]
