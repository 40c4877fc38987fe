"""The runtime: run folders and the results cache (results), checkpoints, and Flower (flower,
flower_app/)."""
