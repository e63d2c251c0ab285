"""Typed params: load and validate params.yaml, and the presets (`python -m params --help`)."""
from params.schema import STRUCTURAL_KEYS, Params
from params.io import ParamsError, dump_params, load_params, params_from_dict
from params.presets import PRESETS, preset

__all__ = ["Params", "ParamsError", "PRESETS", "STRUCTURAL_KEYS", "dump_params", "load_params",
           "params_from_dict", "preset"]
