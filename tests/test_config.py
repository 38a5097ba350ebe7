import json

import pytest

from pointdiff.config import (
    PRESETS,
    DenoiserConfig,
    TrainConfig,
    apply_overrides,
    from_dict,
    get_preset,
    to_dict,
)


def test_presets_round_trip_through_json():
    for name, cfg in PRESETS.items():
        assert from_dict(json.loads(json.dumps(to_dict(cfg)))) == cfg, name
    assert get_preset("base40M") == DenoiserConfig(width=512, depth=12, heads=8, cond_dim=768)


def test_overrides_parse_types_and_reject_unknown_keys():
    cfg = apply_overrides(
        TrainConfig(), ["--lr=3e-4", "--bf16=True", "--max_steps=10", "--betas=[0.9,0.95]"]
    )
    assert (cfg.lr, cfg.bf16, cfg.max_steps, cfg.betas) == (3e-4, True, 10, (0.9, 0.95))
    assert apply_overrides(TrainConfig(), ["--lr=1"]).lr == 1.0
    with pytest.raises(ValueError, match="no field 'lrr'"):
        apply_overrides(TrainConfig(), ["--lrr=1"])
    with pytest.raises(ValueError, match="expects int"):
        apply_overrides(TrainConfig(), ["--max_steps=abc"])
    with pytest.raises(ValueError, match="--key=value"):
        apply_overrides(TrainConfig(), ["lr=1"])
    with pytest.raises(KeyError, match="unknown preset"):
        get_preset("huge")
