"""Prefect flows: orchestration only. Each task calls one library stage function."""

from e2x_pipeline.env import ensure_prefect_home

# Importing a flow is the first step of running one: its Prefect home must exist by then (and
# not before, so that `e2x --help` creates nothing on disk).
ensure_prefect_home()
