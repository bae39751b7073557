"""Inference: padded forward passes and the ``Segmenter`` API."""
