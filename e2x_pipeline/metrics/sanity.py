"""Sanity check by model-parameter randomisation (Adebayo et al. 2018, "Sanity checks for saliency
maps", Sec. 3.1, cascading randomisation).

The detector's weights are re-initialised layer by layer, from the top (output) layers down to
the input, cumulatively; after each step the explanation is recomputed and compared with the one
of the trained model. A method that explains the model must change: its rho with the original
map drops towards 0 once the model is random. A map that stays the same (an edge detector, or a
method dominated by its input multiplier) is not explaining the model.

* Layers are the parameterised leaf modules, grouped by their parent module (a Conv-BN pair is
  one block; an SSD head's per-level convolutions are one head), in registration order, which is
  the input-to-output order for the torchvision detectors here (backbone, then heads).
* A layer is randomised by its own ``reset_parameters()`` (PyTorch's default initialisation: for
  a convolution Kaiming-uniform weights; for BatchNorm unit scale, zero shift and reset running
  statistics); a module without one gets its parameters redrawn from N(0, std of the trained
  values). Adebayo et al. redraw from a truncated normal; any fixed random initialisation serves.
* Randomisation is seeded, and works on a deep copy: the given detector is left untouched.

Similarity of the two maps: Pearson's rho of the signed pixel maps (the issue's target) and, as
Adebayo et al. also report, Spearman's rank correlation of the absolute maps.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

from ..detectors.base import Detector
from .correlation import pearson_rho


def layer_groups(model: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    """Parameterised leaf modules grouped by parent name, in registration (input-to-output)
    order. ``[(parent_name, [modules])]``."""
    groups: dict[str, list[nn.Module]] = {}
    for name, module in model.named_modules():
        if any(True for _ in module.parameters(recurse=False)):
            parent = name.rsplit(".", 1)[0] if "." in name else name
            groups.setdefault(parent, []).append(module)
    return list(groups.items())


def _randomize(modules: list[nn.Module], seed: int, device: torch.device) -> None:
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        for m in modules:
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
                continue
            for p in m.parameters(recurse=False):
                std = float(p.std()) if p.numel() > 1 else 1.0
                p.normal_(0.0, std if std > 0 else 1.0)


def cascading_randomization(detector: Detector, seed: int = 0) -> Iterator[tuple[str, Detector]]:
    """Yield ``(layer, detector)`` with the top 1, 2, ... and finally all layer groups randomised.

    The same detector copy is randomised further at every step (cascading); copy it if you keep
    it past the next step.
    """
    det = copy.deepcopy(detector)
    groups = layer_groups(det.model)
    for i, (name, modules) in enumerate(reversed(groups)):
        _randomize(modules, seed * 1000 + i, det.device)
        det.model.eval()
        yield name, det


def fully_randomized(detector: Detector, seed: int = 0) -> Detector:
    """A copy of ``detector`` with every layer randomised (the cascade's last step)."""
    last = detector
    for _, last in cascading_randomization(detector, seed):  # noqa: B007
        pass
    return last


def map_similarity(original: np.ndarray, randomized: np.ndarray) -> dict[str, float]:
    """``pearson``: rho of the signed maps; ``spearman_abs``: rank correlation of |maps|."""
    a = np.abs(np.asarray(original, dtype=np.float64)).ravel()
    b = np.abs(np.asarray(randomized, dtype=np.float64)).ravel()
    ok = np.isfinite(a).all() and np.isfinite(b).all() and np.ptp(a) > 0 and np.ptp(b) > 0
    return {
        "pearson": pearson_rho(original, randomized),
        "spearman_abs": float(spearmanr(a, b).statistic) if ok else float("nan"),
    }
