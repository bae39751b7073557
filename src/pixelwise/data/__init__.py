"""Datasets: formats, decoding, checks, transforms and the built-in synthetic set."""
