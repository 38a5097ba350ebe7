"""OpenAI Shap-E's released networks in pointdiff: the transmitter's encoder (``encoder``), the
latent → NeRF/STF decoder (``decoder``), the latent diffusion transformer (``transformer``), its
sampler (``sample``) and the checkpoint converter (``convert``)."""

from pointdiff.compat.shape.convert import (
    DOWNLOAD,
    SHAPE_MODELS,
    ShapeConversionError,
    convert_shape,
    convert_shape_state_dict,
    encoder_config,
    load_shape,
    load_shape_encoder,
    shape_config,
)
from pointdiff.compat.shape.decoder import ShapeDecoder, ShapeDecoderConfig, decode_outputs
from pointdiff.compat.shape.encoder import ShapeEncoder, ShapeEncoderConfig
from pointdiff.compat.shape.transformer import LatentDenoiser, LatentDenoiserConfig

__all__ = [
    "DOWNLOAD",
    "SHAPE_MODELS",
    "LatentDenoiser",
    "LatentDenoiserConfig",
    "ShapeConversionError",
    "ShapeDecoder",
    "ShapeDecoderConfig",
    "ShapeEncoder",
    "ShapeEncoderConfig",
    "convert_shape",
    "convert_shape_state_dict",
    "decode_outputs",
    "encoder_config",
    "load_shape",
    "load_shape_encoder",
    "shape_config",
]
