"""Preference losses: a torch-free registry (`registry`) and one module per loss family."""
