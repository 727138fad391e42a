"""Evaluation of an uncertainty map against reference labels: metrics, streaming over the rasters, reports."""
