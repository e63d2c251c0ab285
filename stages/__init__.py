"""The pipeline's stages: one module per stage kind, each runnable as `python -m stages.KIND`."""
