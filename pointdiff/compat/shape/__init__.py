"""OpenAI Shap-E's released networks in pointdiff: the latent → NeRF/STF decoder (``decoder``),
the latent diffusion transformer (``transformer``) and the checkpoint converter (``convert``)."""

from pointdiff.compat.shape.convert import (
    DOWNLOAD,
    SHAPE_MODELS,
    ShapeConversionError,
    convert_shape,
    convert_shape_state_dict,
    encoder_shapes,
    load_shape,
    shape_config,
)
from pointdiff.compat.shape.decoder import ShapeDecoder, ShapeDecoderConfig, decode_outputs
from pointdiff.compat.shape.transformer import LatentDenoiser, LatentDenoiserConfig

__all__ = [
    "DOWNLOAD",
    "SHAPE_MODELS",
    "LatentDenoiser",
    "LatentDenoiserConfig",
    "ShapeConversionError",
    "ShapeDecoder",
    "ShapeDecoderConfig",
    "convert_shape",
    "convert_shape_state_dict",
    "decode_outputs",
    "encoder_shapes",
    "load_shape",
    "shape_config",
]
