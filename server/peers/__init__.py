"""Baselines measured in the same run as the generative model."""
