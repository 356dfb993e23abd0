"""Manifests: YAML reading with positions, prompts files, expansion, diagnostics, the model
catalogue, plans and shard selection. Nothing here talks to the network."""
