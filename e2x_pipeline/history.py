"""Run history: one record per pipeline run, and failure modes matched across checkpoints.

Users run the pipeline on a schedule against each new checkpoint. The history says, run by run,
which failure modes of the previous run *closed*, which *persist* and which are *new*.

The store
---------
``<output_dir>/history.sqlite`` (stdlib ``sqlite3``), three tables:

* ``runs``: one row per run -- ``seq`` (order of first appearance), ``run_key``, times, the eval
  split and its content hash, the config hash, the checkpoint (path, content hash, modification
  time, ``parent`` from the retrain lineage), the metrics, and the run's *failing set* (every
  failure of the split at the operating threshold, as member keys below);
* ``modes``: one row per failure mode of a run -- its stable id, status, kind, size, classes,
  planted cause (benchmark), members, embedding centroid and spread;
* ``closed``: the previous run's modes that this run closed, with the share of their members
  still failing.

``run_key`` is a hash of the checkpoint's content, the split's content and the config hash, so a
rerun of the same run replaces its record in place (one transaction: atomic, never appended
twice) and keeps its ``seq``.

Members
-------
A mode's members are the failures it explains, keyed so that two checkpoints' runs on the same
split can be compared:

* an fn member is the missed GT object, ``gt:<annotation id>``;
* an fp member is the false detection, ``fp:<image id>:<label>:<x1>,<y1>,<x2>,<y2>``; two fp
  members of different runs are the same failure when they lie on the same image, have the same
  label and their boxes overlap with IoU >= 0.5 (another checkpoint's box is never identical).

Matching modes
--------------
The detector's backbone changes between checkpoints, so its features cannot compare two runs'
modes. The fixed embedder is pixels only (:func:`pixel_descriptor`): per failing superpixel, the
CIE-Lab mean and standard deviation of its pixels and a HOG (Dalal & Triggs 2005, scikit-image)
of its bounding box resized to 32 x 32. A mode is summarised by the centroid ``c`` of its
features' descriptors and their spread ``v = mean ||e - c||^2``. Two modes ``A`` (previous run)
and ``B`` (this run) of the same kind have the similarity

    s(A, B) = w * J(A, B) + (1 - w) * exp(-||c_A - c_B||^2 / (v_A + v_B)),

with ``J`` the Jaccard index of their members and ``w = history.member_weight``. The second term
is 1 for two modes with the same centroid and falls as the centroids move apart relative to the
modes' own spread. Modes are matched one to one by the Hungarian algorithm (Kuhn 1955; scipy's
``linear_sum_assignment``) on ``1 - s``; a pair with ``s < history.match_threshold`` is no match.

Each mode of this run is then

* ``persisting``: matched; it inherits the previous mode's stable id, and ``share_failing`` is
  the share of the previous mode's members still failing now;
* ``split``: unmatched, but at least half of its members are members of one previous mode, or
  it is similar to one (``s >= match_threshold``): the clustering cut a persisting mode in two;
  its id is that mode's id with a suffix ``.2``, ``.3``;
* ``new``: anything else; a new stable id ``<kind>-<cause>-like-<n>`` on the benchmark, or
  ``<kind>-<dominant class>-<n>``.

and every unmatched previous mode is ``closed`` when fewer than half of its members still fail
(``CLOSED_BELOW``), else ``dissolved``: its failures remain but no longer form a mode like it
(they joined other modes), which is not a fix. Both carry the share of members still failing.
The stable id names the mode's saved view in FiftyOne (``e2x-mode-<stable id>``), so a view keeps
its name from checkpoint to checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .data.coco import load_image

STATUSES = ("new", "persisting", "split", "closed", "dissolved")
# an unmatched previous mode is closed only when most of its members are now detected
CLOSED_BELOW = 0.5


def unmatched_status(share_failing: float) -> str:
    """``closed`` when fewer than ``CLOSED_BELOW`` of an unmatched mode's members still fail,
    else ``dissolved``."""
    return "closed" if share_failing < CLOSED_BELOW else "dissolved"


FP_MEMBER_IOU = 0.5

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_key TEXT UNIQUE NOT NULL,
    first_time TEXT NOT NULL,
    time TEXT NOT NULL,
    split TEXT NOT NULL,
    split_hash TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    checkpoint TEXT NOT NULL,
    checkpoint_hash TEXT NOT NULL,
    checkpoint_mtime REAL,
    parent TEXT,
    previous_key TEXT,
    metrics TEXT NOT NULL,
    failing TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS modes (
    run_key TEXT NOT NULL,
    mode_id INTEGER NOT NULL,
    stable_id TEXT NOT NULL,
    status TEXT NOT NULL,
    matched_similarity REAL,
    share_failing REAL NOT NULL,
    kind TEXT NOT NULL,
    size INTEGER NOT NULL,
    n_members INTEGER NOT NULL,
    classes TEXT NOT NULL,
    cause TEXT,
    members TEXT NOT NULL,
    centroid TEXT NOT NULL,
    spread REAL NOT NULL,
    PRIMARY KEY (run_key, mode_id)
);
CREATE TABLE IF NOT EXISTS closed (
    run_key TEXT NOT NULL,
    stable_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    share_failing REAL NOT NULL,
    n_members INTEGER NOT NULL,
    PRIMARY KEY (run_key, stable_id)
);
"""


class HistoryError(ValueError):
    """The history store cannot be read or does not hold what was asked."""


# ---- members ----


def member_key(row: Any) -> str:
    """The member key of one failure (a candidates row): ``gt:<id>`` or ``fp:<img>:<lab>:<box>``."""
    if row["outcome"] == "fn":
        return f"gt:{int(row['gt_id'])}"
    box = ",".join(f"{float(row[f'box_{k}']):.1f}" for k in ("x1", "y1", "x2", "y2"))
    return f"fp:{int(row['image_id'])}:{int(row['label'])}:{box}"


def _fp_parts(key: str) -> tuple[int, int, np.ndarray]:
    _, image, label, box = key.split(":")
    return int(image), int(label), np.array([float(v) for v in box.split(",")])


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def shared_members(a: Sequence[str], b: Sequence[str]) -> int:
    """How many members of ``b`` are also members of ``a``: equal gt keys, or fp keys on the same
    image and label whose boxes overlap with IoU >= 0.5 (module doc)."""
    sa = set(a)
    n = sum(1 for k in b if k.startswith("gt:") and k in sa)
    fps: dict[tuple[int, int], list[np.ndarray]] = {}
    for k in a:
        if k.startswith("fp:"):
            image, label, box = _fp_parts(k)
            fps.setdefault((image, label), []).append(box)
    for k in b:
        if k.startswith("fp:"):
            image, label, box = _fp_parts(k)
            if any(_iou(box, o) >= FP_MEMBER_IOU for o in fps.get((image, label), [])):
                n += 1
    return n


def share_failing(members: Sequence[str], failing: Sequence[str]) -> float:
    """The share of ``members`` that are still failures in a run whose failing set is
    ``failing``: ``|members ∩ failing| / |members|`` (fp members by box overlap)."""
    if not members:
        return 0.0
    return shared_members(failing, members) / len(members)


def failing_set(candidates: pd.DataFrame) -> list[str]:
    """Every failure of a candidates table (fn and fp at the operating threshold), as members."""
    rows = candidates[candidates["outcome"].isin(["fn", "fp"])]
    return sorted({member_key(r) for _, r in rows.iterrows()})


# ---- the fixed embedder ----


def pixel_descriptor(
    image: np.ndarray, mask: np.ndarray, box: Sequence[float], lab: np.ndarray | None = None
) -> np.ndarray:
    """A checkpoint-independent descriptor of one superpixel (module doc): Lab mean and std of its
    pixels (scaled by 100, 128, 128) and the HOG of its bounding box at 32 x 32, each part
    L2-normalised and weighted 1/sqrt(2). ``image`` is ``[H, W, 3]`` RGB in [0, 1]; ``lab`` is
    its CIE-Lab image when the caller has it (one conversion per image, not per superpixel)."""
    from skimage.color import rgb2gray, rgb2lab
    from skimage.feature import hog
    from skimage.transform import resize

    lab = (rgb2lab(image) if lab is None else lab)[mask] / np.array([100.0, 128.0, 128.0])
    colour = np.concatenate([lab.mean(0), lab.std(0)])
    h, w = mask.shape
    x1, y1 = max(0, int(box[0])), max(0, int(box[1]))
    x2, y2 = min(w, max(x1 + 1, int(np.ceil(box[2])))), min(h, max(y1 + 1, int(np.ceil(box[3]))))
    crop = resize(rgb2gray(image[y1:y2, x1:x2]), (32, 32), anti_aliasing=True)
    shape = hog(crop, orientations=8, pixels_per_cell=(16, 16), cells_per_block=(1, 1))
    parts = [v / max(float(np.linalg.norm(v)), 1e-12) for v in (colour, shape)]
    return (np.concatenate(parts) / np.sqrt(2.0)).astype(np.float32)


def feature_descriptors(features: pd.DataFrame, split_dir: Path, segments_key: str) -> np.ndarray:
    """``[n_features, D]`` pixel descriptors of a features table, in its row order, reading each
    image's superpixels (``segments_key``) from ``maps/<image_id>.npz`` of ``split_dir``."""
    from skimage.color import rgb2lab

    from .layout import SplitLayout

    layout = SplitLayout(Path(split_dir))
    out = np.zeros((len(features), 0), dtype=np.float32)
    pos = {idx: k for k, idx in enumerate(features.index)}
    for image_id, g in features.groupby("image_id", sort=True):
        path = layout.map_file(int(image_id))
        try:
            with np.load(path, allow_pickle=False) as maps:
                seg = maps[segments_key]
        except (OSError, KeyError, ValueError) as e:
            raise HistoryError(
                f"cannot read the superpixels {segments_key!r} of {path} ({e}); rerun "
                "'e2x explain' with the same output_dir"
            ) from e
        image = load_image(g["image_path"].iloc[0]).permute(1, 2, 0).numpy()
        lab = rgb2lab(image)
        for idx, f in g.iterrows():
            box = (f["x1"], f["y1"], f["x2"], f["y2"])
            d = pixel_descriptor(image, seg == int(f["segment"]), box, lab)
            if out.shape[1] == 0:
                out = np.zeros((len(features), d.size), dtype=np.float32)
            out[pos[idx]] = d
    return out


# ---- records ----


@dataclass
class ModeRecord:
    """One failure mode of one run, as the history stores it."""

    mode_id: int
    kind: str
    size: int
    classes: dict[str, int]
    cause: str | None
    members: list[str]
    centroid: list[float]
    spread: float
    stable_id: str = ""
    status: str = "new"
    matched_similarity: float | None = None
    share_failing: float = 1.0


@dataclass
class RunRecord:
    """One pipeline run: what it ran on and the failure modes it found."""

    split: str
    split_hash: str
    config_hash: str
    checkpoint: str
    checkpoint_hash: str
    checkpoint_mtime: float | None
    parent: str | None
    metrics: dict[str, Any]
    failing: list[str]
    modes: list[ModeRecord]
    time: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def run_key(self) -> str:
        src = f"{self.checkpoint_hash}|{self.split}|{self.split_hash}|{self.config_hash}"
        return hashlib.sha256(src.encode()).hexdigest()[:16]


def mode_records(
    features: pd.DataFrame,
    modes: pd.DataFrame,
    candidates: pd.DataFrame,
    descriptors: np.ndarray,
) -> list[ModeRecord]:
    """The history's view of a cluster stage's output: per mode its members, classes, cause, and
    the centroid and spread of its features' pixel descriptors."""
    cands = candidates.set_index("candidate_id")
    out = []
    for m in modes.itertuples():
        idx = np.flatnonzero(features["mode_id"].to_numpy() == int(m.mode_id))
        emb = descriptors[idx]
        centroid = emb.mean(0)
        spread = float(((emb - centroid) ** 2).sum(1).mean())
        ids = sorted(set(features["candidate_id"].iloc[idx]))
        members = sorted({member_key(cands.loc[c]) for c in ids})
        out.append(
            ModeRecord(
                mode_id=int(m.mode_id),
                kind=str(m.kind),
                size=int(m.size),
                classes={str(k): int(v) for k, v in json.loads(m.classes).items()},
                cause=m.cause if isinstance(m.cause, str) else None,
                members=members,
                centroid=[float(v) for v in centroid],
                spread=spread,
            )
        )
    return out


# ---- matching ----


def mode_similarity(a: ModeRecord, b: ModeRecord, member_weight: float = 0.5) -> float:
    """``s(A, B) = w J(A, B) + (1 - w) exp(-||c_A - c_B||^2 / (v_A + v_B))`` (module doc); 0 for
    modes of different kinds."""
    if a.kind != b.kind:
        return 0.0
    inter = shared_members(a.members, b.members)
    union = len(a.members) + len(b.members) - inter
    jaccard = inter / union if union else 0.0
    ca, cb = np.asarray(a.centroid), np.asarray(b.centroid)
    d2 = float(((ca - cb) ** 2).sum()) if ca.size == cb.size else float("inf")
    appearance = float(np.exp(-d2 / max(a.spread + b.spread, 1e-12)))
    return member_weight * jaccard + (1.0 - member_weight) * appearance


@dataclass
class Comparison:
    """What a run did to the previous run's failure modes."""

    modes: list[ModeRecord]
    closed: list[dict[str, Any]]
    previous: dict[str, Any] | None = None  # the runs row compared against (HistoryStore.record)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "mode"


def _base_name(mode: ModeRecord) -> str:
    if mode.cause:
        return f"{mode.kind}-{_slug(mode.cause)}-like"
    top = max(mode.classes.items(), key=lambda kv: (kv[1], kv[0]))[0] if mode.classes else "mode"
    return f"{mode.kind}-{_slug(top)}"


def compare_runs(
    previous: list[ModeRecord] | None,
    current: list[ModeRecord],
    failing_now: Sequence[str],
    taken: set[str],
    match_threshold: float = 0.3,
    member_weight: float = 0.5,
) -> Comparison:
    """Match ``current`` modes to the ``previous`` run's and name them (module doc).

    ``taken`` holds every stable id the history used before this run, so that a new id is never
    an old one; the returned modes are copies with ``stable_id``, ``status``,
    ``matched_similarity`` and ``share_failing`` set."""
    from scipy.optimize import linear_sum_assignment

    prev = previous or []
    modes = [ModeRecord(**{**m.__dict__}) for m in current]
    match: dict[int, int] = {}
    if prev and modes:
        sim = np.array([[mode_similarity(p, c, member_weight) for c in modes] for p in prev])
        rows, cols = linear_sum_assignment(1.0 - sim)
        match = {int(c): int(r) for r, c in zip(rows, cols, strict=True)}
        match = {c: r for c, r in match.items() if sim[r, c] >= match_threshold}
        for c, r in match.items():
            m = modes[c]
            m.stable_id, m.status = prev[r].stable_id, "persisting"
            m.matched_similarity = float(sim[r, c])
            m.share_failing = share_failing(prev[r].members, failing_now)
    used = set(taken) | {m.stable_id for m in modes if m.stable_id}
    for c in sorted(set(range(len(modes))) - set(match), key=lambda k: modes[k].mode_id):
        m = modes[c]
        parent = _split_parent(prev, m, match_threshold, member_weight)
        if parent is not None:
            m.status = "split"
            m.share_failing = share_failing(parent.members, failing_now)
            m.stable_id = _next_id(f"{parent.stable_id}.", used, start=2)
        else:
            m.status, m.share_failing = "new", 1.0
            m.stable_id = _next_id(f"{_base_name(m)}-", used, start=1)
        used.add(m.stable_id)
    matched_prev = set(match.values())
    split_from = {m.stable_id.rsplit(".", 1)[0] for m in modes if m.status == "split"}
    closed = [
        {
            "stable_id": p.stable_id,
            "kind": p.kind,
            "share_failing": share_failing(p.members, failing_now),
            "n_members": len(p.members),
        }
        for r, p in enumerate(prev)
        if r not in matched_prev and p.stable_id not in split_from
    ]
    return Comparison(modes, closed)


def _split_parent(
    prev: list[ModeRecord], mode: ModeRecord, match_threshold: float, member_weight: float
) -> ModeRecord | None:
    """The previous mode an unmatched mode was cut from: the one holding at least half of its
    members, else the most similar one when that similarity reaches the match threshold (the
    Hungarian matching is one to one; a mode the clustering cut in two has two similar parts)."""
    best: tuple[float, ModeRecord] | None = None
    for p in prev:
        if p.kind != mode.kind or not mode.members:
            continue
        share = shared_members(p.members, mode.members) / len(mode.members)
        if share >= 0.5 and (best is None or share > best[0]):
            best = (share, p)
    if best is not None:
        return best[1]
    sims = [(mode_similarity(p, mode, member_weight), k) for k, p in enumerate(prev)]
    sims = [(s, k) for s, k in sims if s >= match_threshold]
    return prev[max(sims)[1]] if sims else None


def _next_id(prefix: str, used: set[str], start: int) -> str:
    n = start
    while f"{prefix}{n}" in used:
        n += 1
    return f"{prefix}{n}"


# ---- the store ----


class HistoryStore:
    """``history.sqlite`` under a run's output folder (module doc)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @contextlib.contextmanager
    def _connect(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        if not write and not self.path.is_file():
            raise HistoryError(
                f"no run history at {self.path}; it is written by 'e2x run' (or 'e2x demo') with "
                "the same output_dir"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(self.path, timeout=60)
        except sqlite3.Error as e:
            raise HistoryError(f"cannot open the run history {self.path}: {e}") from e
        try:
            conn.row_factory = sqlite3.Row
            if write:
                conn.executescript(_SCHEMA)
            yield conn
        except sqlite3.DatabaseError as e:
            raise HistoryError(
                f"the run history {self.path} cannot be read ({e}); move it away and rerun to "
                "start a new history"
            ) from e
        finally:
            conn.close()

    def exists(self) -> bool:
        return self.path.is_file()

    def runs(self) -> pd.DataFrame:
        """Every run, in order of first appearance."""
        cols = [
            "seq",
            "run_key",
            "first_time",
            "time",
            "split",
            "split_hash",
            "config_hash",
            "checkpoint",
            "checkpoint_hash",
            "checkpoint_mtime",
            "parent",
            "previous_key",
            "metrics",
        ]
        with self._connect() as conn:
            rows = conn.execute(f"SELECT {', '.join(cols)} FROM runs ORDER BY seq").fetchall()
        out = pd.DataFrame([dict(r) for r in rows], columns=cols)
        out["metrics"] = [json.loads(m) for m in out["metrics"]]
        return out

    def modes(self, run_key: str | None = None) -> pd.DataFrame:
        """The modes of one run (or of every run), with the run's ``seq``."""
        query = (
            "SELECT runs.seq, modes.* FROM modes JOIN runs USING (run_key)"
            + (" WHERE run_key = ?" if run_key else "")
            + " ORDER BY runs.seq, modes.mode_id"
        )
        with self._connect() as conn:
            rows = conn.execute(query, (run_key,) if run_key else ()).fetchall()
        out = pd.DataFrame([dict(r) for r in rows])
        for col in ("members", "centroid", "classes"):
            if col in out:
                out[col] = [json.loads(v) for v in out[col]]
        return out

    def closed(self) -> pd.DataFrame:
        query = (
            "SELECT runs.seq, closed.* FROM closed JOIN runs USING (run_key) "
            "ORDER BY runs.seq, closed.stable_id"
        )
        with self._connect() as conn:
            return pd.DataFrame([dict(r) for r in conn.execute(query).fetchall()])

    def _mode_records(self, conn: sqlite3.Connection, run_key: str) -> list[ModeRecord]:
        rows = conn.execute(
            "SELECT * FROM modes WHERE run_key = ? ORDER BY mode_id", (run_key,)
        ).fetchall()
        return [
            ModeRecord(
                mode_id=r["mode_id"],
                kind=r["kind"],
                size=r["size"],
                classes=json.loads(r["classes"]),
                cause=r["cause"],
                members=json.loads(r["members"]),
                centroid=json.loads(r["centroid"]),
                spread=r["spread"],
                stable_id=r["stable_id"],
                status=r["status"],
                matched_similarity=r["matched_similarity"],
                share_failing=r["share_failing"],
            )
            for r in rows
        ]

    def previous_run(self, record: RunRecord) -> dict[str, Any] | None:
        """The run this one compares against: the latest earlier run (by ``seq``) on the same split
        content, other than this run itself."""
        if not self.exists():
            return None
        with self._connect() as conn:
            own = conn.execute(
                "SELECT seq FROM runs WHERE run_key = ?", (record.run_key,)
            ).fetchone()
            bound = own["seq"] if own else None
            query = "SELECT * FROM runs WHERE split = ? AND split_hash = ? AND run_key != ?"
            params: list[Any] = [record.split, record.split_hash, record.run_key]
            if bound is not None:
                query += " AND seq < ?"
                params.append(bound)
            row = conn.execute(query + " ORDER BY seq DESC LIMIT 1", params).fetchone()
        return dict(row) if row else None

    def last_run(self) -> dict[str, Any] | None:
        """The most recently recorded run (by time), or None for an empty history."""
        if not self.exists():
            return None
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM runs ORDER BY time DESC, seq DESC LIMIT 1").fetchone()
        return dict(row) if row else None

    def record(
        self, record: RunRecord, match_threshold: float = 0.3, member_weight: float = 0.5
    ) -> Comparison:
        """Compare ``record`` with the previous run, then write it in one transaction: a rerun of
        the same run (same ``run_key``) replaces its rows and keeps its place in the order."""
        prev_row = self.previous_run(record)
        with self._connect(write=True) as conn:
            conn.execute("BEGIN IMMEDIATE")  # one writer at a time, from here to the commit
            own = conn.execute(
                "SELECT seq FROM runs WHERE run_key = ?", (record.run_key,)
            ).fetchone()
            bound = own["seq"] if own else None
            taken_q = "SELECT stable_id FROM modes JOIN runs USING (run_key) WHERE run_key != ?"
            params: list[Any] = [record.run_key]
            if bound is not None:
                taken_q += " AND seq < ?"
                params.append(bound)
            taken = {r["stable_id"] for r in conn.execute(taken_q, params).fetchall()}
            previous = self._mode_records(conn, prev_row["run_key"]) if prev_row else None
            comparison = compare_runs(
                previous, record.modes, record.failing, taken, match_threshold, member_weight
            )
            self._write(conn, record, prev_row, comparison, own is not None)
            conn.commit()
        comparison.previous = prev_row
        return comparison

    @staticmethod
    def _write(
        conn: sqlite3.Connection,
        record: RunRecord,
        prev_row: dict | None,
        comparison: Comparison,
        exists: bool,
    ) -> None:
        key = record.run_key
        values = {
            "time": record.time,
            "split": record.split,
            "split_hash": record.split_hash,
            "config_hash": record.config_hash,
            "checkpoint": record.checkpoint,
            "checkpoint_hash": record.checkpoint_hash,
            "checkpoint_mtime": record.checkpoint_mtime,
            "parent": record.parent,
            "previous_key": prev_row["run_key"] if prev_row else None,
            "metrics": json.dumps(record.metrics, sort_keys=True, default=str),
            "failing": json.dumps(record.failing),
        }
        if exists:
            sets = ", ".join(f"{k} = :{k}" for k in values)
            conn.execute(
                f"UPDATE runs SET {sets} WHERE run_key = :run_key", {**values, "run_key": key}
            )
        else:
            cols = ["run_key", "first_time", *values]
            conn.execute(
                f"INSERT INTO runs ({', '.join(cols)}) VALUES ({', '.join(':' + c for c in cols)})",
                {**values, "run_key": key, "first_time": record.time},
            )
        conn.execute("DELETE FROM modes WHERE run_key = ?", (key,))
        conn.execute("DELETE FROM closed WHERE run_key = ?", (key,))
        for m in comparison.modes:
            conn.execute(
                "INSERT INTO modes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key,
                    m.mode_id,
                    m.stable_id,
                    m.status,
                    m.matched_similarity,
                    m.share_failing,
                    m.kind,
                    m.size,
                    len(m.members),
                    json.dumps(m.classes, sort_keys=True),
                    m.cause,
                    json.dumps(m.members),
                    json.dumps(m.centroid),
                    m.spread,
                ),
            )
        for c in comparison.closed:
            conn.execute(
                "INSERT INTO closed VALUES (?, ?, ?, ?, ?)",
                (key, c["stable_id"], c["kind"], c["share_failing"], c["n_members"]),
            )


# ---- views of the history ----


def trend_table(store: HistoryStore) -> pd.DataFrame:
    """One row per (run, stable mode id): its status and the share of its members still failing,
    in run order; ``closed`` / ``dissolved`` rows come from the run that no longer matched the
    mode."""
    modes = store.modes()
    rows = []
    if len(modes):
        for m in modes.itertuples():
            rows.append(
                {
                    "seq": int(m.seq),
                    "stable_id": m.stable_id,
                    "kind": m.kind,
                    "status": m.status,
                    "size": int(m.size),
                    "n_members": int(m.n_members),
                    "share_failing": float(m.share_failing),
                }
            )
    closed = store.closed()
    for c in closed.itertuples() if len(closed) else []:
        rows.append(
            {
                "seq": int(c.seq),
                "stable_id": c.stable_id,
                "kind": c.kind,
                "status": unmatched_status(float(c.share_failing)),
                "size": 0,
                "n_members": int(c.n_members),
                "share_failing": float(c.share_failing),
            }
        )
    cols = ["seq", "stable_id", "kind", "status", "size", "n_members", "share_failing"]
    return pd.DataFrame(rows, columns=cols).sort_values(["seq", "stable_id"], ignore_index=True)


def _short(path: str, n: int = 28) -> str:
    name = Path(path).name
    return name if len(name) <= n else "..." + name[-(n - 3) :]


def format_history(store: HistoryStore) -> str:
    """The runs, then per failure mode its status run by run: ``new 36`` (members), ``kept 0.64``
    (share of the previous members still failing), ``closed 0.10``."""
    runs = store.runs()
    lines = [f"{'run':>3}  {'time':<25} {'checkpoint':<28} {'hash':<12} {'mAP@0.5':>8}  parent"]
    for r in runs.itertuples():
        m = r.metrics.get("map50")
        cell = f"{m:8.3f}" if isinstance(m, int | float) else f"{'-':>8}"
        parent = _short(r.parent) if isinstance(r.parent, str) else "-"
        lines.append(
            f"{r.seq:>3}  {r.time:<25} {_short(r.checkpoint):<28} {r.checkpoint_hash[:12]:<12} "
            f"{cell}  {parent}"
        )
    trend = trend_table(store)
    if not len(trend):
        return "\n".join([*lines, "", "no failure modes recorded"])
    seqs = runs["seq"].tolist()
    width = 16
    lines += [
        "",
        f"{'failure mode':<30} {'kind':<4} " + "".join(f"{'run ' + str(s):>{width}}" for s in seqs),
    ]
    order = trend.groupby("stable_id")["seq"].min().sort_values(kind="stable")
    for sid in sorted(order.index, key=lambda s: (order[s], s)):
        t = trend[trend["stable_id"] == sid].set_index("seq")
        cells = []
        for s in seqs:
            if s not in t.index:
                cells.append(f"{'':>{width}}")
                continue
            row = t.loc[s]
            word = {"persisting": "kept", "split": "split"}
            word.update({k: k for k in ("new", "closed", "dissolved")})
            if row["status"] == "new":
                text = f"new {int(row['n_members'])}"
            else:
                text = f"{word[row['status']]} {row['share_failing']:.2f}"
            cells.append(f"{text:>{width}}")
        lines.append(f"{sid:<30} {t['kind'].iloc[0]:<4} " + "".join(cells))
    lines.append(
        "new N: N member failures; kept/split/closed/dissolved S: share S of the previous run's "
        "members of that mode still failing (dissolved: unmatched, but most still fail)"
    )
    return "\n".join(lines)


def comparison_markdown(comparison: Comparison, previous_seq: int | None) -> str:
    """What closed, persisted and opened since the previous run, as markdown (Prefect artifact)."""
    if previous_seq is None:
        opened = ", ".join(f"`{m.stable_id}` ({len(m.members)})" for m in comparison.modes)
        return f"First run in this history: {len(comparison.modes)} failure modes ({opened})."
    lines = [f"Since run {previous_seq}:", ""]
    closed = [c for c in comparison.closed if unmatched_status(c["share_failing"]) == "closed"]
    dissolved = [c for c in comparison.closed if c not in closed]
    lines.append(
        "- **closed:** "
        + (
            ", ".join(
                f"`{c['stable_id']}` ({c['share_failing']:.0%} still failing)" for c in closed
            )
            or "none"
        )
    )
    kept = [m for m in comparison.modes if m.status in ("persisting", "split")]
    lines.append(
        "- **persisting:** "
        + (
            ", ".join(f"`{m.stable_id}` ({m.share_failing:.0%} still failing)" for m in kept)
            or "none"
        )
    )
    if dissolved:
        lines.append(
            "- **dissolved** (no longer a mode of its own; its failures joined others): "
            + ", ".join(
                f"`{c['stable_id']}` ({c['share_failing']:.0%} still failing)" for c in dissolved
            )
        )
    new = [m for m in comparison.modes if m.status == "new"]
    lines.append(
        "- **new:** " + (", ".join(f"`{m.stable_id}` ({len(m.members)})" for m in new) or "none")
    )
    return "\n".join(lines)


def build_run_record(
    split_dir: Path,
    split: str,
    split_hash: str,
    config_hash: str,
    checkpoint: Path,
    segments_key: str,
    metrics: dict[str, Any],
) -> RunRecord:
    """A run's record from its split's tables (candidates, features, failure modes, maps) and its
    checkpoint (content hash, modification time, ``parent`` from the retrain lineage)."""
    from .detectors import load_checkpoint
    from .io_utils import file_hash
    from .layout import SplitLayout

    layout = SplitLayout(Path(split_dir), split)
    candidates = pd.read_parquet(layout.require("candidates"))
    features = pd.read_parquet(layout.require("features")).drop(columns=["embedding"])
    modes = pd.read_parquet(layout.require("failure_modes"))
    features = features[features["mode_id"] >= 0].reset_index(drop=True)
    descriptors = feature_descriptors(features, layout.root, segments_key)
    parent = load_checkpoint(checkpoint)[1].get("parent")
    counts = candidates["outcome"].value_counts()
    return RunRecord(
        split=split,
        split_hash=split_hash,
        config_hash=config_hash,
        checkpoint=str(Path(checkpoint).resolve()),
        checkpoint_hash=file_hash(checkpoint)[:16],
        checkpoint_mtime=Path(checkpoint).stat().st_mtime,
        parent=str(parent) if parent else None,
        metrics={**metrics, **{f"n_{k}": int(counts.get(k, 0)) for k in ("tp", "fp", "fn")}},
        failing=failing_set(candidates),
        modes=mode_records(features, modes, candidates, descriptors),
    )


def comparison_summary(comparison: Comparison, previous: dict | None, run_key: str) -> dict:
    """The JSON-able summary of one recorded run's comparison (the flow's result, the report)."""
    return {
        "run_key": run_key,
        "previous_run": previous["run_key"] if previous else None,
        "previous_seq": previous["seq"] if previous else None,
        "modes": [
            {
                "mode_id": m.mode_id,
                "stable_id": m.stable_id,
                "status": m.status,
                "kind": m.kind,
                "members": len(m.members),
                "share_failing": round(m.share_failing, 4),
                "similarity": None
                if m.matched_similarity is None
                else round(m.matched_similarity, 4),
            }
            for m in comparison.modes
        ],
        "closed": [{**c, "share_failing": round(c["share_failing"], 4)} for c in comparison.closed],
        "markdown": comparison_markdown(comparison, previous["seq"] if previous else None),
    }


CHECKPOINT_SUFFIXES = (".pt", ".pth")


def newest_checkpoint(folder: str | Path) -> Path | None:
    """The most recently modified ``*.pt`` / ``*.pth`` file directly in ``folder`` (ties: the
    later name), or None when there is none. A file still being written by the training job is
    the team's to avoid: write it under another name and rename it into the folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise HistoryError(
            f"--watch {folder} is not a folder; give the folder your training job "
            "writes checkpoints into"
        )
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES]
    if not files:
        return None
    return max(files, key=lambda p: (p.stat().st_mtime_ns, p.name))


def watch_decision(folder: str | Path, store: HistoryStore) -> tuple[Path | None, str]:
    """Which checkpoint a watched run uses, or None and why it skips: the newest checkpoint in
    ``folder``, unless it is the last recorded run's checkpoint (same content) or older than it."""
    from .io_utils import file_hash

    ckpt = newest_checkpoint(folder)
    if ckpt is None:
        return None, f"no checkpoint (*.pt, *.pth) in {folder} yet"
    last = store.last_run()
    if last is None:
        return ckpt, f"{ckpt.name}: the first run of this history"
    if file_hash(ckpt)[:16] == last["checkpoint_hash"]:
        return None, f"{ckpt.name} is the checkpoint of the last run (run {last['seq']})"
    if last["checkpoint_mtime"] is not None and ckpt.stat().st_mtime <= last["checkpoint_mtime"]:
        return None, f"no checkpoint in {folder} is newer than the last run's (run {last['seq']})"
    return ckpt, f"{ckpt.name} is newer than the last run's checkpoint (run {last['seq']})"
