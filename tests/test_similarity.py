"""The pool's regions as the FiftyOne Brain similarity index ``e2x_regions``.

A small benchmark pool (no detector: its regions and embeddings are drawn at random, the way
regions.parquet and region_embeddings.npy hold them) is published with a repair set selected by
the repair stage's own functions. FiftyOne's answers are checked against scikit-learn
``NearestNeighbors`` (cosine, exact) on the same embeddings, the repair stage's search.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.neighbors import NearestNeighbors

from e2x_pipeline.data.coco import load_coco

NAME = "e2x-test-similarity-pool"
NEIGHBOURS = 6
DIM = 12


@pytest.fixture(scope="module")
def pool_case(fo_db, tmp_path_factory):
    """(pool, regions, region embeddings, failing features, repair set) of 10 pool images."""
    from e2x_pipeline.data.benchmark import make_benchmark
    from e2x_pipeline.repair import match_modes, select_repair_set

    root = tmp_path_factory.mktemp("sim-bench")
    make_benchmark(root, seed=0, sizes={"train": 0, "val": 0, "test": 0, "pool": 10})
    pool = load_coco(root / "annotations/pool.json", root / "images/pool")
    rng = np.random.default_rng(0)
    rows = []
    for image_id in pool.image_ids:
        for s in range(8):
            x1, y1 = rng.integers(0, 100, size=2)
            rows.append((f"{image_id}/s{s}", image_id, s, x1, y1, x1 + 20, y1 + 24))
    regions = pd.DataFrame(
        rows, columns=["region_id", "image_id", "segment", "x1", "y1", "x2", "y2"]
    )
    regions["file_name"] = [pool.images[i]["file_name"] for i in regions["image_id"]]
    regions["area"] = 480
    # non-negative like the backbone's pooled features, so their mean is far from zero
    emb = rng.random((len(regions), DIM))
    n_feat = 9
    features = pd.DataFrame(
        {
            "feature_id": [f"val/{k}/fn/s{k}" for k in range(n_feat)],
            "candidate_id": [f"val/{k}/fn" for k in range(n_feat)],
            "mode_id": [0, 0, 0, 1, 1, 1, 2, 2, -1],  # -1: noise, never a query
            "embedding": list(rng.random((n_feat, DIM))),
        }
    )
    member = features["mode_id"] >= 0
    scores = match_modes(
        features[member], np.stack(features["embedding"][member]), regions, emb, NEIGHBOURS
    )
    sizes = features[member].groupby("mode_id").size().to_dict()
    repair_set = select_repair_set(scores, sizes, 4, "proportional")
    repair_set["file_name"] = [pool.images[int(i)]["file_name"] for i in repair_set["image_id"]]
    repair_set["image_path"] = [str(pool.image_path(int(i))) for i in repair_set["image_id"]]
    yield pool, regions, emb, features, repair_set
    from e2x_pipeline import fiftyone_io

    fiftyone_io.delete_dataset(NAME)


def _publish(pool_case, index: str = "retrieved"):
    from e2x_pipeline import fiftyone_io

    pool, regions, emb, features, repair_set = pool_case
    pr = fiftyone_io.PoolRegions(regions, emb, features, NEIGHBOURS, index=index)
    return fiftyone_io.publish_repair(NAME, pool, repair_set, regions=pr)


def _top(ds, query, k: int) -> list[str]:
    """The region ids of FiftyOne's top ``k`` patches for ``query``, nearest first."""
    from e2x_pipeline.fiftyone_io import REGIONS_BRAIN_KEY, REGIONS_FIELD

    view = ds.to_patches(REGIONS_FIELD).sort_by_similarity(query, k=k, brain_key=REGIONS_BRAIN_KEY)
    return view.values(f"{REGIONS_FIELD}.region_id")


def test_brain_index_answers_like_nearest_neighbors_and_a_rerun_keeps_one_run(pool_case):
    from e2x_pipeline import fiftyone_io
    from e2x_pipeline.fiftyone_io import REGIONS_BRAIN_KEY, REGIONS_FIELD

    pool, regions, emb, features, repair_set = pool_case
    fiftyone_io.delete_dataset(NAME)
    ds = _publish(pool_case)
    assert ds.list_brain_runs() == [REGIONS_BRAIN_KEY]
    assert ds.get_brain_info(REGIONS_BRAIN_KEY).config.patches_field == REGIONS_FIELD
    # the oracle: the repair stage's search over EVERY pool region
    oracle = NearestNeighbors(n_neighbors=NEIGHBOURS, metric="cosine", algorithm="brute")
    oracle.fit(emb)
    ids = regions["region_id"].to_numpy()
    queries = fiftyone_io.failure_queries(ds)
    failing = features[features["mode_id"] >= 0].reset_index(drop=True)
    assert queries["feature_id"].tolist() == failing["feature_id"].tolist()
    indexed = set(ds.values(f"{REGIONS_FIELD}.detections.region_id", unwind=True))
    for q in queries.itertuples():
        raw = failing.loc[failing["feature_id"] == q.feature_id, "embedding"].iloc[0]
        want = ids[oracle.kneighbors(raw[None])[1][0]].tolist()
        assert set(want) <= indexed  # the retrieved regions are all in the index
        assert _top(ds, q.query, NEIGHBOURS) == want, q.feature_id
        # a raw embedding maps onto the same query vector
        np.testing.assert_allclose(fiftyone_io.region_query(ds, raw[None])[0], q.query)
    # a patch as the query (the App's "sort by similarity" on a selected patch): the oracle
    # is NearestNeighbors over the indexed regions, the patch itself first
    patch = ds.to_patches(REGIONS_FIELD).first()[REGIONS_FIELD]
    rows = np.flatnonzero(np.isin(ids, sorted(indexed)))
    sub = NearestNeighbors(n_neighbors=5, metric="cosine", algorithm="brute").fit(emb[rows])
    own = emb[ids == patch.region_id]
    assert _top(ds, patch.id, 5) == ids[rows][sub.kneighbors(own)[1][0]].tolist()
    # ... and a vector query after it still agrees (the Brain centres its copy in place)
    q0 = queries.iloc[0]
    first = failing.loc[failing["feature_id"] == q0.feature_id, "embedding"].iloc[0]
    assert _top(ds, q0.query, 3) == ids[oracle.kneighbors(first[None])[1][0]][:3].tolist()
    # each repair sample's matching region is one of its indexed patches
    for s in ds.load_saved_view(fiftyone_io.REPAIR_VIEW):
        rid = s[fiftyone_io.REPAIR_FIELD].detections[0]["region_id"]
        assert rid in {d["region_id"] for d in s[REGIONS_FIELD].detections}

    # a rerun replaces the labels and the run: one brain run over exactly the new label ids
    ds = _publish(pool_case)
    assert ds.list_brain_runs() == [REGIONS_BRAIN_KEY] and ds.list_runs() == [
        fiftyone_io.FAILURE_QUERIES_RUN
    ]
    index = ds.load_brain_results(REGIONS_BRAIN_KEY, cache=False)
    labels = ds.values(f"{REGIONS_FIELD}.detections.id", unwind=True)
    assert sorted(index.label_ids) == sorted(labels) and len(labels) == len(indexed)
    # index="all": every pool region, and the failure queries answer the same
    ds = _publish(pool_case, index="all")
    assert ds.count(f"{REGIONS_FIELD}.detections") == len(regions)
    q = fiftyone_io.failure_queries(ds).iloc[1]
    raw = failing.loc[failing["feature_id"] == q.feature_id, "embedding"].iloc[0]
    assert _top(ds, q.query, NEIGHBOURS) == ids[oracle.kneighbors(raw[None])[1][0]].tolist()


def test_bad_region_tables_fail_with_one_line(pool_case, fo_db):
    from e2x_pipeline import fiftyone_io

    pool, regions, emb, features, repair_set = pool_case
    short = fiftyone_io.PoolRegions(regions, emb[:-1], features, NEIGHBOURS)
    with pytest.raises(ValueError, match="rerun 'e2x repair'"):
        fiftyone_io.publish_repair(NAME, pool, repair_set, regions=short)
