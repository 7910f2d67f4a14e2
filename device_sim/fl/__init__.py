"""Federated personalization over simulated phones (issue #5)."""
