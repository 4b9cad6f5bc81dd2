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
* :func:`select_similar_patches` -- patch similarity, what FiftyOne Brain's
  ``compute_similarity(patches_field=...)`` + ``sort_by_similarity`` gives a user: each
  explained failure's box (the missed object's GT box for an FN, the detection's box for an FP)
  is embedded with the repair stage's region embedding (:class:`RegionEmbedder`, the box as the
  region) and searched over the pool's patches, the detector's own detections on each pool image
  (score >= ``min_score``, its ``max_patches`` best: the pool has no labels). A pool image scores
  the highest cosine similarity between one of its patches and any failure box. This is the
  strongest retrieval baseline: it looks where the failure is, but not at what caused it.
* :func:`select_core_set` -- diversity: k-center greedy on the whole-image embeddings (the
  core-set of Sener & Savarese 2018, Alg. 1): starting from the labelled training images, each
  pick is the pool image farthest (Euclidean) from everything labelled or picked so far,
  ``u = argmax_i min_j ||e_i - e_j||``. The picks are nested, so one full ordering serves
  every budget.
* :func:`select_e2x` -- the repair stage's mode-aware selection at another budget, with the
  config's ``repair.allocation`` (``e2x``) and with the diminishing-returns allocation
  (``e2x_diminishing``, :func:`e2x_pipeline.repair.allocate`).
* :func:`select_oracle` -- NOT a strategy anyone could use: it reads the benchmark's planted
  causes of the pool (``causes.json``) and takes only images that carry one, one cause after the
  other in turn (seeded order within a cause). It is the upper bound of any selection, and it
  validates a benchmark: a cause whose oracle curve stays flat cannot be fixed by selection at
  these budgets, whatever the strategy.

:data:`STRATEGIES` is their registry: name -> ``strategy(inputs, budget, seed)``, each taking a
:class:`SelectionInputs` (what any strategy may use; the model-based rankings are computed once,
on first use, and cut to each budget).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.neighbors import NearestNeighbors

from e2x_pipeline.data.coco import CocoDataset, load_image
from e2x_pipeline.detectors.base import Detector
from e2x_pipeline.features import RegionEmbedder
from e2x_pipeline.inference import detect_dataset, iter_image_batches
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


def select_similar_patches(
    detector: Detector,
    pool: CocoDataset,
    failure_boxes: Sequence[tuple[str, Sequence[float]]],
    budget: int,
    min_score: float = 0.05,
    max_patches: int = 20,
) -> list[str]:
    """Pool images whose patch is most similar (cosine) to any failure box (module doc).

    ``failure_boxes`` holds ``(image path, xyxy box)`` per explained failure. A pool image with
    no detection at ``min_score`` has no patch and comes last.
    """
    if not failure_boxes:
        raise ValueError("patch similarity needs the box of at least one explained failure")
    embedder = RegionEmbedder(detector)
    by_image: dict[str, list[Sequence[float]]] = {}
    for path, box in failure_boxes:
        by_image.setdefault(path, []).append(box)
    paths = sorted(by_image)
    queries = embedder.embed_boxes(
        [load_image(p) for p in paths], [np.asarray(by_image[p]) for p in paths]
    )
    index = NearestNeighbors(n_neighbors=1, metric="cosine", algorithm="brute")
    index.fit(np.concatenate(queries))
    dets = detect_dataset(detector, pool, min_score, progress=False)
    patches, owners = [], []
    for ids, images in iter_image_batches(pool, embedder.batch_size):
        boxes = []
        for i in ids:
            d = dets.get(i)
            keep = torch.argsort(d.scores, descending=True)[:max_patches] if d else []
            boxes.append(d.boxes[keep].numpy() if d else np.zeros((0, 4)))
        for i, emb in zip(ids, embedder.embed_boxes(images, boxes), strict=True):
            patches.append(emb)
            owners += [i] * len(emb)
    sim = dict.fromkeys(pool.image_ids, -np.inf)
    if owners:  # one search for all patches; an image scores its best patch
        best = 1.0 - index.kneighbors(np.concatenate(patches))[0][:, 0]
        sim.update(pd.Series(best).groupby(np.asarray(owners)).max().to_dict())
    order = sorted(pool.image_ids, key=lambda i: (-sim[i], i))
    return _names(pool, order[:budget])


def k_center_greedy(pool_emb: np.ndarray, labelled_emb: np.ndarray, budget: int) -> list[int]:
    """Row indices of ``pool_emb`` in the order k-center greedy picks them (module doc).

    Ties go to the lowest index. With no labelled rows the first pick is row 0.
    """
    n = len(pool_emb)
    if labelled_emb.size:
        index = NearestNeighbors(n_neighbors=1, algorithm="brute").fit(labelled_emb)
        nearest = index.kneighbors(pool_emb)[0][:, 0]
    else:
        nearest = np.full(n, np.inf)
    picks: list[int] = []
    for _ in range(min(budget, n)):
        u = int(np.argmax(nearest))  # the first maximum: the lowest index on a tie
        picks.append(u)
        nearest = np.minimum(nearest, np.linalg.norm(pool_emb - pool_emb[u], axis=1))
        nearest[u] = -1.0  # never picked twice, even among duplicates
    return picks


def select_core_set(
    detector: Detector, pool: CocoDataset, labelled_images: Sequence[str], budget: int
) -> list[str]:
    """k-center greedy over whole-image embeddings, from the labelled images (module doc)."""
    pool_emb = image_embeddings(detector, [str(pool.image_path(i)) for i in pool.image_ids])
    labelled = image_embeddings(detector, list(labelled_images))
    picks = k_center_greedy(pool_emb, labelled, budget)
    return _names(pool, [pool.image_ids[k] for k in picks])


def select_e2x(
    scores: pd.DataFrame, modes: pd.DataFrame, pool: CocoDataset, budget: int, allocation: str
) -> list[str]:
    """The repair stage's selection (per-mode quotas over match scores) at ``budget``."""
    sizes = {int(m.mode_id): int(m.size) for m in modes.itertuples()}
    chosen = select_repair_set(scores, sizes, budget, allocation)
    return _names(pool, chosen["image_id"].tolist())


def select_oracle(
    pool_causes: dict[str, set[str]], causes: Sequence[str], budget: int, seed: int
) -> list[str]:
    """Round robin over ``causes``: each turn takes the next not yet taken carrier of the cause
    (carriers in a seeded random order); stops early when no carrier is left (module doc)."""
    rng = np.random.default_rng(seed)
    queues = []
    for cause in causes:
        carriers = sorted(f for f, ks in pool_causes.items() if cause in ks)
        queues.append([carriers[k] for k in rng.permutation(len(carriers))])
    taken: list[str] = []
    seen: set[str] = set()
    while len(taken) < budget and any(queues):
        for q in queues:
            while q and q[0] in seen:
                q.pop(0)
            if q and len(taken) < budget:
                seen.add(q[0])
                taken.append(q.pop(0))
    return taken


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
    # (image path, xyxy box) per explained failure: the GT box of an FN, the box of an FP
    failure_boxes: list[tuple[str, list[float]]] = field(default_factory=list)
    labelled_images: list[str] = field(default_factory=list)  # the training images
    # pool file name -> the planted causes it carries (the benchmark's causes.json); only the
    # oracle reads it
    pool_causes: dict[str, set[str]] = field(default_factory=dict)

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

    @cached_property
    def patch_similarity_order(self) -> list[str]:
        """Every pool image, most similar patch to any failure box first (module doc)."""
        return select_similar_patches(
            self.detector, self.pool, self.failure_boxes, len(self.pool.images)
        )

    @cached_property
    def core_set_order(self) -> list[str]:
        """Every pool image in k-center greedy order from the labelled images (module doc)."""
        return select_core_set(
            self.detector, self.pool, self.labelled_images, len(self.pool.images)
        )

    def rank(self) -> None:
        """Compute the model-based rankings now (so that their time can be measured apart)."""
        _ = self.uncertainty_order, self.similarity_order
        _ = self.patch_similarity_order, self.core_set_order


Strategy = Callable[[SelectionInputs, int, int], list[str]]  # (inputs, budget, seed) -> files


def _e2x(inputs: SelectionInputs, budget: int, seed: int) -> list[str]:
    return select_e2x(inputs.scores, inputs.modes, inputs.pool, budget, inputs.allocation)


def _e2x_diminishing(inputs: SelectionInputs, budget: int, seed: int) -> list[str]:
    return select_e2x(inputs.scores, inputs.modes, inputs.pool, budget, "diminishing")


def _random(inputs: SelectionInputs, budget: int, seed: int) -> list[str]:
    return select_random(inputs.pool, budget, seed)


def _least_confidence(inputs: SelectionInputs, budget: int, seed: int) -> list[str]:
    return inputs.uncertainty_order[:budget]


def _similarity(inputs: SelectionInputs, budget: int, seed: int) -> list[str]:
    return inputs.similarity_order[:budget]


def _patch_similarity(inputs: SelectionInputs, budget: int, seed: int) -> list[str]:
    return inputs.patch_similarity_order[:budget]


def _core_set(inputs: SelectionInputs, budget: int, seed: int) -> list[str]:
    return inputs.core_set_order[:budget]


def _oracle(inputs: SelectionInputs, budget: int, seed: int) -> list[str]:
    if not inputs.pool_causes:
        raise ValueError("the oracle needs the planted causes of the pool (the benchmark only)")
    causes = sorted({k for ks in inputs.pool_causes.values() for k in ks})
    return select_oracle(inputs.pool_causes, causes, budget, seed)


# name -> strategy; the order is the order of the benchmark's tables and plots
STRATEGIES: dict[str, Strategy] = {
    "e2x": _e2x,
    "e2x_diminishing": _e2x_diminishing,
    "random": _random,
    "least_confidence": _least_confidence,
    "similarity": _similarity,
    "patch_similarity": _patch_similarity,
    "core_set": _core_set,
    "oracle": _oracle,
}

UPPER_BOUNDS = frozenset({"oracle"})
"""Strategies that read the answer: reported, never a baseline E2X is compared against."""


def get_strategy(name: str) -> Strategy:
    """The strategy registered as ``name`` (a KeyError lists the registered ones)."""
    if name not in STRATEGIES:
        raise KeyError(f"unknown selection strategy {name!r}; registered: {', '.join(STRATEGIES)}")
    return STRATEGIES[name]
