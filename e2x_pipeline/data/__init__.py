"""Datasets: COCO reading/validation and the planted-failure benchmark generator."""
