"""Prefect flows: orchestration only. Each task calls one library stage function."""
