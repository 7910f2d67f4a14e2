"""edge-gr cloud side: data, semantic IDs, the generative model, training and evaluation."""
