"""Interoperability with other projects' released weights (OpenAI Point-E: ``compat.pointe``)."""

from pointdiff.compat.pointe import (
    POINTE_MODELS,
    PointeConversionError,
    convert_pointe_state_dict,
    load_converted,
    load_pointe_model,
    save_converted,
)

__all__ = [
    "POINTE_MODELS",
    "PointeConversionError",
    "convert_pointe_state_dict",
    "load_converted",
    "load_pointe_model",
    "save_converted",
]
