"""The GUIDE core: data, networks, diffusion, samplers, guidance and continual training, with no
pipeline in it (the stages in `stages/` call it)."""
