"""Every shipped recipe parses, and its resolved values equal the paper's Tables 5 and 6 (PAPER.md §3).

The tables are written out here independently of the YAML files.
"""
import pytest

from convnext.models import get_spec
from convnext.train import TrainConfig, list_recipes, load_config, load_recipe
from convnext.train.schedule import scaled_lr

# Table 5, IN-1K column (the defaults) and IN-22K column.
TABLE5_COMMON = dict(base_lr=4e-3, lr_base_batch=4096, weight_decay=0.05, betas=(0.9, 0.999), eps=1e-8, min_lr=1e-6,
                     randaug="rand-m9-mstd0.5-inc1", mixup=0.8, cutmix=1.0, reprob=0.25, smoothing=0.1,
                     layer_decay=None, clip_grad=None, head_init_scale=None, img_size=224, layer_scale=None)
IN1K_DROP_PATH = {"tiny": 0.1, "small": 0.4, "base": 0.5, "large": 0.5}
IN22K_DROP_PATH = {"tiny": 0.0, "small": 0.0, "base": 0.1, "large": 0.1, "xlarge": 0.2}
# §1.5: isotropic = IN-1K recipe with warmup 50, layer scale off for S/B, drop path 0.1/0.2/0.5, EMA.
ISO = {"small": (0.0, 0.1), "base": (0.0, 0.2), "large": (1e-6, 0.5)}
# Table 6: fine-tuning.
TABLE6_COMMON = dict(base_lr=5e-5, lr_base_batch=512, weight_decay=1e-8, epochs=30, warmup_epochs=0, mixup=0.0,
                     cutmix=0.0, randaug="rand-m9-mstd0.5-inc1", reprob=0.25, smoothing=0.1, head_init_scale=0.001,
                     clip_grad=None, betas=(0.9, 0.999))
FT22K_DROP_PATH = {"tiny": 0.0, "small": 0.1, "base": 0.2, "large": 0.3, "xlarge": 0.4}
FT1K_384_DROP_PATH = {"base": 0.8, "large": 0.95}


def _check(cfg: TrainConfig, expected: dict):
    for k, v in expected.items():
        got = getattr(cfg, k)
        assert got == (pytest.approx(v) if isinstance(v, float) else v), f"{cfg.recipe}: {k} = {got}, paper: {v}"


def test_defaults_are_the_in1k_recipe():
    cfg = TrainConfig()
    _check(cfg, dict(TABLE5_COMMON, epochs=300, warmup_epochs=20, ema=True, ema_decay=0.9999, amp="off"))
    assert scaled_lr(cfg.base_lr, 32 * 128) == pytest.approx(4e-3)


@pytest.mark.parametrize("name", list_recipes())
def test_every_recipe_parses(name):
    """A recipe is a non-empty mapping of known options, and the resolved config holds each value as written."""
    import dataclasses

    d = load_recipe(name)
    assert d, f"{name}: empty recipe"
    cfg = load_config(name)
    assert cfg.recipe == name
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for key, value in d.items():
        assert key in fields, key
        got = getattr(cfg, key)
        if key == "model_overrides":
            assert got == value
        elif isinstance(got, tuple):
            assert list(got) == pytest.approx(list(value)), key
        elif isinstance(got, float):
            assert got == pytest.approx(float(value)), key
        else:
            assert got == value, key
    cfg = load_config(name)
    assert cfg.recipe == name
    get_spec(cfg.model)  # a registered model


def test_paper_recipes_match_tables():
    shipped = set(list_recipes())
    expected_names = (
        {f"in1k_convnext_{m}" for m in IN1K_DROP_PATH}
        | {f"in1k_convnext_isotropic_{m}" for m in ISO}
        | {f"in22k_convnext_{m}" for m in IN22K_DROP_PATH}
        | {f"in22k_ft_in1k_{r}_convnext_{m}" for r in (224, 384) for m in FT22K_DROP_PATH}
        | {f"in1k_ft_384_convnext_{m}" for m in FT1K_384_DROP_PATH}
        | {"digits", "cifar10"}
    )
    assert expected_names <= shipped, sorted(expected_names - shipped)

    for m, dp in IN1K_DROP_PATH.items():
        cfg = load_config(f"in1k_convnext_{m}")
        _check(cfg, dict(TABLE5_COMMON, model=f"convnext_{m}", epochs=300, warmup_epochs=20, ema=True,
                         ema_decay=0.9999, drop_path=dp))
        assert get_spec(cfg.model).train_drop_path == dp
    for m, (ls, dp) in ISO.items():
        cfg = load_config(f"in1k_convnext_isotropic_{m}")
        _check(cfg, dict({**TABLE5_COMMON, "layer_scale": ls}, model=f"convnext_isotropic_{m}", epochs=300,
                         warmup_epochs=50, ema=True, drop_path=dp))
    for m, dp in IN22K_DROP_PATH.items():
        cfg = load_config(f"in22k_convnext_{m}")
        _check(cfg, dict(TABLE5_COMMON, model=f"convnext_{m}", epochs=90, warmup_epochs=5, ema=False, drop_path=dp))
    for res in (224, 384):
        for m, dp in FT22K_DROP_PATH.items():
            cfg = load_config(f"in22k_ft_in1k_{res}_convnext_{m}")
            _check(cfg, dict(TABLE6_COMMON, model=f"convnext_{m}", img_size=res, layer_decay=0.8, drop_path=dp,
                             ema=(m == "xlarge")))
            if cfg.ema:
                assert cfg.ema_decay == 0.9999
    for m, dp in FT1K_384_DROP_PATH.items():
        cfg = load_config(f"in1k_ft_384_convnext_{m}")
        _check(cfg, dict(TABLE6_COMMON, model=f"convnext_{m}", img_size=384, layer_decay=0.7, drop_path=dp, ema=False))


def test_overrides_and_unknown_keys():
    cfg = load_config("digits", epochs=3, model_overrides={"kernel_size": 5})
    assert cfg.epochs == 3
    assert cfg.model_overrides == {**load_recipe("digits")["model_overrides"], "kernel_size": 5}  # merged
    with pytest.raises(ValueError, match="epoch.*did you mean epochs"):
        load_config("digits", epoch=3)
    with pytest.raises(ValueError, match="unknown recipe"):
        load_config("in1k_convnext_tinyy")
    with pytest.raises(ValueError, match="amp"):
        TrainConfig(amp="fp8")
