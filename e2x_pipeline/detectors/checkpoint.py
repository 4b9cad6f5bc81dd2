"""Checkpoints: a state_dict plus a small metadata record, loaded with ``weights_only=True``.

A checkpoint file holds ``{"state_dict": {...}, "meta": {...}}`` where meta records the
architecture, class names, input size, the data hash the model was trained on and its parent
checkpoint. Only tensors and plain Python values are stored, so loading never runs code: a
pickle carrying code is refused by ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from ..io_utils import atomic_write


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and says what to do."""


def save_checkpoint(
    path: str | Path, state_dict: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    with atomic_write(path, "wb") as fh:
        torch.save({"state_dict": state_dict, "meta": meta}, fh)


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Return ``(state_dict, meta)``. A bare state_dict gets empty meta."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; train one with 'e2x train'")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" not in str(exc).lower():  # not a refusal: the bytes are not a pickle
            raise CheckpointError(
                f"checkpoint {path} cannot be read (UnpicklingError: {exc}); it is truncated or "
                "not a PyTorch file. Re-download or re-save it"
            ) from None
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        # torch's first line suggests weights_only=False; name the refused object instead
        what = next((ln for ln in lines if "global" in ln.lower()), lines[-1] if lines else "")
        raise CheckpointError(
            f"checkpoint {path} was refused: it holds Python objects, not only weights, and loading"
            f" it could run code ({what}). E2X loads checkpoints with torch.load("
            "weights_only=True) only. If you trust its source, re-save it as a state_dict: "
            "torch.save(model.state_dict(), path)"
        ) from None
    except Exception as exc:  # noqa: BLE001  torch raises RuntimeError/EOFError/KeyError/...
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); it is truncated or "
            "not a PyTorch file. Re-download or re-save it"
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj:
        return obj["state_dict"], dict(obj.get("meta") or {})
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, {}
    raise CheckpointError(f"checkpoint {path} holds neither a state_dict nor {{state_dict, meta}}")
