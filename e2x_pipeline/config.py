"""One validated configuration for every stage.

The config is a YAML file whose keys mirror :class:`E2XConfig`. Unknown keys and wrong types are
errors that name the key. Command-line ``--set section.key=value`` overrides are applied on top of
the file before validation, so they are checked the same way.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .layout import RunLayout, SplitLayout
from .registry import ARCHITECTURES, EXPLAINERS, NATIVE_IMAGE_SIZE


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the key and the fix."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class BenchmarkConfig(_Section):
    """Sizes of the planted-failure benchmark (see data/README.md)."""

    seed: int = 0
    image_size: int = Field(128, ge=64, le=512)
    n_train: int = Field(900, ge=10)
    n_val: int = Field(200, ge=10)
    n_test: int = Field(200, ge=10)
    n_pool: int = Field(600, ge=10)
    variant: Literal["default", "hard"] = "default"
    """``default``: each planted cause nearly the same every time (two or three examples repair
    it). ``hard``: every cause instance varies (the occluder's texture, colour, angle and
    coverage; the camouflage bricks' hue; the distractor's shape family), causes that need many
    examples (``e2x_pipeline.data.benchmark``). Give it its own ``data.root``."""


class SplitSpec(_Section):
    """One COCO split: an annotations JSON and the folder its ``file_name`` entries live in."""

    annotations: Path
    images: Path


class FiftyOneSplit(_Section):
    """One split of a FiftyOne input dataset: the samples with a tag, or a saved view."""

    tag: str | None = None
    view: str | None = None

    @model_validator(mode="after")
    def _one_selector(self) -> FiftyOneSplit:
        if (self.tag is None) == (self.view is None):
            raise ValueError("a FiftyOne split names exactly one of 'tag' or 'view'")
        return self


class FiftyOneSource(_Section):
    """An existing FiftyOne dataset as the input (read only; e2x never writes into it)."""

    dataset: str
    gt_field: str = "ground_truth"
    """The ``Detections`` field holding the ground truth."""
    id_field: str | None = None
    """An integer sample field to use as image id (FiftyOne's COCO importer with
    ``include_id=True`` writes ``<label_field>_coco_id``). Unset: ``coco_id`` if the dataset has
    it, else 1.. in filepath order."""
    splits: dict[str, FiftyOneSplit] = Field(min_length=1)
    """Split name -> ``{tag: ...}`` or ``{view: ...}``; the pool is a split like the others."""


class DataConfig(_Section):
    root: Path = Path("data/benchmark")
    """Benchmark layout: ``<root>/annotations/<split>.json`` and ``<root>/images/<split>/``."""
    splits: dict[str, SplitSpec] = Field(default_factory=dict)
    """Explicit per-split paths; they win over the ``root`` layout."""
    eval_split: str = "val"
    fiftyone_dataset: str | None = None
    """The name e2x publishes the eval split under in FiftyOne (default: ``e2x-<split>``)."""
    fiftyone: FiftyOneSource | None = None
    """Read the splits from an existing FiftyOne dataset instead of COCO files."""

    def split(self, name: str) -> SplitSpec:
        if name in self.splits:
            return self.splits[name]
        return SplitSpec(
            annotations=self.root / "annotations" / f"{name}.json",
            images=self.root / "images" / name,
        )


def _registered_method(name: str) -> str:
    if name not in EXPLAINERS:
        raise ValueError(f"unknown explanation method {name!r}; choose one of {EXPLAINERS.names()}")
    return name


class ModelConfig(_Section):
    arch: str = "compact_ssd"
    """A registered architecture (``e2x_pipeline.registry.ARCHITECTURES``) or ``custom``."""
    checkpoint: Path | None = None
    """A state_dict checkpoint written by ``e2x train`` (loaded with ``weights_only=True``)."""
    weights: str | None = None
    """torchvision pretrained weights: a name (e.g. ``DEFAULT``; torchvision downloads them on
    first use) or a local file of them (a state_dict, e.g. torchvision's own download). Their
    class list is the 91-entry COCO one unless ``model.classes`` says otherwise."""
    entrypoint: str | None = None
    """``module:function`` returning a Detector, for ``arch: custom``. Never read from data."""
    image_size: int | None = Field(None, ge=32, le=2048)
    """The side the model's transform resizes to (the shorter side for the FPN families).
    Unset: the architecture's own (``registry.NATIVE_IMAGE_SIZE``: 128 for the compact SSD, 800
    for torchvision's FPN detectors). A checkpoint's metadata wins."""
    classes: list[str] | Literal["coco"] | None = None
    """The model's class names in label order, index 0 the background (``__background__``), for
    a checkpoint without E2X metadata (a bare torchvision state_dict). Checkpoint metadata wins.
    ``coco``: torchvision's 91-entry COCO label space (``weights.meta["categories"]``), the
    classes of its COCO-pretrained weights; ``model.weights`` implies it."""

    @model_validator(mode="after")
    def _native_size(self) -> ModelConfig:
        if self.image_size is None and self.arch in NATIVE_IMAGE_SIZE:
            # set once, so the training cache key sees the size that is used
            object.__setattr__(self, "image_size", NATIVE_IMAGE_SIZE[self.arch])
        return self

    @field_validator("classes")
    @classmethod
    def _class_names(cls, v: list[str] | str | None) -> list[str] | str | None:
        if isinstance(v, list) and (len(v) < 2 or len(set(v)) != len(v)):
            raise ValueError(
                "model.classes needs the background plus at least one class, all distinct "
                f"(got {v!r:.120}); index 0 is the background, e.g. ['__background__', 'car']"
            )
        return v

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, v: str) -> str:
        if v != "custom" and v not in ARCHITECTURES:
            raise ValueError(
                f"unknown architecture {v!r}; choose one of {[*sorted(ARCHITECTURES), 'custom']}"
            )
        return v

    @field_validator("entrypoint")
    @classmethod
    def _entrypoint_form(cls, v: str | None) -> str | None:
        if v is not None and (v.count(":") != 1 or not all(v.split(":"))):
            raise ValueError(f"entrypoint must look like 'package.module:function', got {v!r}")
        return v


class TrainConfig(_Section):
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    hflip: bool = True
    num_threads: int | None = Field(None, ge=1)


class MiningConfig(_Section):
    low_threshold: float = Field(0.01, gt=0, lt=1)
    operating_threshold: float = Field(0.5, gt=0, lt=1)
    iou: float = Field(0.5, gt=0, le=1)
    background_iou: float = Field(0.1, ge=0, lt=1)
    batch_size: int = Field(64, ge=1)
    on_bad_record: Literal["error", "skip"] = "error"


class ExplainConfig(_Section):
    methods: list[str] = Field(default_factory=lambda: ["e2x"])
    """Registered explanation methods (``e2x_pipeline.registry.EXPLAINERS``)."""
    n_segments: int = Field(200, ge=2)
    compactness: float = Field(10.0, gt=0)
    k: int = Field(32, ge=1)
    reference: Literal["mean", "zeros", "blur"] = "mean"
    aggregate: Literal["sum", "mean"] = "sum"
    batch_size: int = Field(256, ge=1)
    box_maps: bool = False
    lime_samples: int = Field(1000, ge=2)
    drise_masks: int = Field(1000, ge=1)
    max_candidates: int | None = Field(None, ge=1)
    options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Per-method settings, checked against each method's own ``Options`` model, e.g.
    ``options: {ig: {scheme: riemann_left}, drise: {grid: [8, 8]}}``."""

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, v: list[str]) -> list[str]:
        return [_registered_method(m) for m in v]

    @field_validator("options")
    @classmethod
    def _method_options(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, opts in v.items():
            options_model = EXPLAINERS.get(_registered_method(name)).Options
            try:
                options_model.model_validate(opts)
            except ValidationError as exc:
                raise ValueError(f"options.{name}: {_first_error(exc)}") from None
        return v


class MetricsConfig(_Section):
    """Explanation metrics (e2x_pipeline/metrics/; ``e2x evaluate-explanations``)."""

    steps: int = Field(32, ge=1)
    """Deletion / insertion steps (D-RISE similarity score after each)."""
    deletion_baseline: Literal["zeros", "blur", "mean"] = "zeros"
    insertion_baseline: Literal["zeros", "blur", "mean"] = "blur"
    class_vector: Literal["onehot", "detection"] = "onehot"
    min_overlap: float = Field(0.5, gt=0, le=1)
    """Pointing game: share of the pointed superpixel that must lie in the region."""
    batch_size: int = Field(256, ge=1)
    sanity: bool = False
    """Also re-explain with a fully randomised detector and report rho (Adebayo et al. 2018)."""
    reference_lime_segments: int = Field(1000, ge=2)
    reference_lime_samples: int = Field(10000, ge=2)
    reference_pda_samples: int = Field(10, ge=1)
    """The paper's references (LIME 1000 segments K=10000; conditional PDA) for the bench."""
    counterfactual: bool = True
    """Counterfactual check of failures (metrics/counterfactual.py): replace the top-n blamed
    superpixels and see whether the FN gets detected / the FP goes away."""
    counterfactual_ns: list[int] = Field(default_factory=lambda: [1, 2, 3, 5], min_length=1)
    counterfactual_fill: Literal["reference", "blur"] = "reference"
    """``reference``: the explain reference; ``blur``: a blurred copy of the image."""
    counterfactual_iou: float = Field(0.5, gt=0, le=1)
    """IoU with the GT box (FN) or the false box (FP) that a candidate needs to count."""

    @field_validator("counterfactual_ns")
    @classmethod
    def _positive_ns(cls, v: list[int]) -> list[int]:
        if any(n < 1 for n in v):
            raise ValueError(f"counterfactual_ns must be positive superpixel counts, got {v}")
        return sorted(set(v))


class ClusterConfig(_Section):
    """Failing features and failure modes (e2x_pipeline/cluster.py)."""

    explain_method: str = "e2x"
    fraction: float = Field(0.3, gt=0, le=1)
    """A superpixel is a failing feature when its failing-sign value >= fraction * max |value|."""
    max_per_candidate: int = Field(3, ge=1)
    levels: list[int] | None = Field(default_factory=lambda: [0])
    """Backbone levels to embed regions with (0 = finest); null = all (measured: [0] is best)."""
    appearance: bool = True
    """Append the region's CIE-Lab mean and std to the backbone embedding."""
    appearance_weight: float = Field(0.5, ge=0)
    method: Literal["kmeans", "agglomerative", "hdbscan"] = "kmeans"

    @field_validator("explain_method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        return _registered_method(v)

    max_modes: int = Field(8, ge=1)
    """Upper bound of failure modes per outcome (fn, fp); the count is chosen by silhouette."""
    min_mode_size: int = Field(5, ge=2)
    representatives: int = Field(6, ge=1)


class RepairConfig(_Section):
    """Matching pool images to failure modes (e2x_pipeline/repair.py)."""

    pool_split: str = "pool"
    budget: int = Field(30, ge=1)
    """Pool images to select in total (the labelling budget)."""
    allocation: Literal["proportional", "even", "diminishing"] = "proportional"
    """How the budget is split across failure modes (repair.allocate)."""
    neighbours: int = Field(50, ge=1)
    """Nearest pool regions retrieved per failing feature."""
    pool_labels: Path | None = None
    """COCO labels revealed for selected pool images (default: the benchmark's pool_labels.json)."""
    fiftyone_dataset: str | None = None
    """FiftyOne dataset for the pool (default: e2x-<pool_split>)."""
    batch_size: int = Field(64, ge=1)


class RetrainConfig(_Section):
    """Retraining with the repair set (e2x_pipeline/retrain.py)."""

    mode: Literal["finetune", "scratch"] = "finetune"
    """finetune: continue from the checkpoint; scratch: train anew with train.* settings."""
    epochs: int = Field(4, ge=1)
    """Fine-tuning epochs (scratch uses train.epochs)."""
    lr: float = Field(1e-3, gt=0)
    repeat: int = Field(4, ge=1)
    """How often each added pool image is repeated per epoch (the same for every strategy)."""
    eval_split: str = "test"


class HistoryConfig(_Section):
    """The run history and matching failure modes across runs (e2x_pipeline/history.py)."""

    match_threshold: float = Field(0.3, ge=0, le=1)
    """Two runs' modes match when their similarity is at least this."""
    member_weight: float = Field(0.5, ge=0, le=1)
    """Weight of the members' Jaccard index in the similarity; the rest is the pixel-descriptor
    overlap of the modes' features."""
    store: Path | None = None
    """The history file. Default ``<output_dir>/history.sqlite``; point the runs of several output
    folders at one file to compare their checkpoints (``e2x demo`` does, for its second run)."""


class E2XConfig(_Section):
    seed: int = 0
    device: str = "auto"
    output_dir: Path = Path("runs/demo")
    benchmark: BenchmarkConfig = Field(default_factory=BenchmarkConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    mining: MiningConfig = Field(default_factory=MiningConfig)
    explain: ExplainConfig = Field(default_factory=ExplainConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    repair: RepairConfig = Field(default_factory=RepairConfig)
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)
    history: HistoryConfig = Field(default_factory=HistoryConfig)

    @field_validator("device")
    @classmethod
    def _device_form(cls, v: str) -> str:
        if v == "auto" or v == "cpu" or v == "cuda" or v.startswith("cuda:") or v == "mps":
            return v
        raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {v!r}")

    @property
    def layout(self) -> RunLayout:
        """Where this run's tables live (``output_dir``): see :mod:`e2x_pipeline.layout`."""
        return RunLayout(self.output_dir)

    @property
    def history_path(self) -> Path:
        """The run history file: ``history.store``, else ``<output_dir>/history.sqlite``."""
        return self.history.store or self.layout.history

    def split_layout(self, split: str) -> SplitLayout:
        """``<output_dir>/<split>/``: one split's tables."""
        return self.layout.split(split)

    def section_hash(self, *sections: str) -> str:
        """A short content hash of the named sections, used to key cached stage results."""
        dump = self.model_dump(mode="json")
        payload = json.dumps({s: dump[s] for s in sections}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
        node = child
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"mining.iou=0.6"`` -> ``("mining.iou", 0.6)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


def _first_error(err: ValidationError) -> str:
    """One line for a nested model's error: ``key: message`` (unknown keys named as such)."""
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"])
    if e["type"] == "extra_forbidden":
        return f"unknown key '{loc}': remove it or check its spelling"
    return f"'{loc}': {e['msg']} (got {e.get('input')!r})"


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"  - unknown key '{loc}': remove it or check its spelling")
        else:
            lines.append(f"  - '{loc}': {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def load_config(
    path: str | Path | None = None, overrides: dict[str, Any] | list[str] | None = None
) -> E2XConfig:
    """Read the YAML file (if any), apply overrides, validate and return the config."""
    tree: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist; pass an existing YAML file")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping of sections at the top")
        tree = loaded
    if isinstance(overrides, dict):  # programmatic: a None value means "not given"
        items = [(k, v) for k, v in overrides.items() if v is not None]
    else:  # --set strings: "key=null" sets null (e.g. model.checkpoint=null)
        items = [parse_override(o) for o in overrides or []]
    for key, value in items:
        _set_dotted(tree, key, value)
    try:
        return E2XConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def resolve_device(name: str) -> str:
    """``auto`` picks CUDA when available; otherwise the named device."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"device {name!r} was asked for, but PyTorch sees no CUDA GPU on this machine; use "
            "--device cpu (or auto)"
        )
    return name
