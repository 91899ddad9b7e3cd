"""Every registered model reproduces its reference params and MACs (paper / timm / V2) within 2%."""
import pytest
import torch

import convnext
from convnext.models import build_model, count_flops, count_params, get_spec

CONTRACT = [
    "convnext_atto", "convnext_femto", "convnext_pico", "convnext_nano", "convnext_tiny", "convnext_small",
    "convnext_base", "convnext_large", "convnext_xlarge", "convnext_isotropic_small", "convnext_isotropic_base",
    "convnext_isotropic_large",
]


def test_contract_names_registered():
    names = convnext.list_models()
    assert all(n in names for n in CONTRACT)
    assert len(names) == len(set(names))


def _meta_model(name, **changes):
    import dataclasses

    with torch.device("meta"):
        return build_model(dataclasses.replace(get_spec(name).config, **changes))


@pytest.mark.parametrize("name", convnext.list_models("convnext*"))
def test_params_and_flops_match_reference(name):
    spec = get_spec(name)
    model = _meta_model(name)
    assert count_params(model) / 1e6 == pytest.approx(spec.params_m, rel=0.02)
    assert spec.gmacs, f"{name} has no reference FLOPs"
    for res, ref in spec.gmacs.items():
        assert count_flops(model, res) / 1e9 == pytest.approx(ref, rel=0.02), (name, res)


def test_exact_analytic_macs():
    # PAPER.md §1.4 [D]: conv+linear MACs reproduce the paper to 0.01G
    assert count_flops(_meta_model("convnext_tiny")) == pytest.approx(4.456e9, abs=1e6)
    assert count_flops(_meta_model("convnext_base")) == pytest.approx(15.355e9, abs=1e6)
    assert count_flops(_meta_model("convnext_isotropic_large")) == pytest.approx(59.70e9, abs=1e7)


def test_22k_head_params():
    # PAPER.md §1.4: with a 21841-way head T 44.6M, XL 392.9M
    assert count_params(_meta_model("convnext_tiny", num_classes=21841)) / 1e6 == pytest.approx(44.6, abs=0.05)
    assert count_params(_meta_model("convnext_xlarge", num_classes=21841)) / 1e6 == pytest.approx(392.9, abs=0.05)


def test_unknown_model_suggests():
    with pytest.raises(KeyError, match="convnext_tiny"):
        convnext.create_model("convnext_tiyn")


def test_unknown_override_is_an_error():
    with pytest.raises(TypeError, match="unknown config override"):
        convnext.create_model("convnext_atto", no_such_field=1)


def test_duplicate_registration_refused():
    from convnext.models.registry import ModelSpec, register_model

    with pytest.raises(ValueError, match="already registered"):
        register_model(ModelSpec("convnext_tiny", get_spec("convnext_tiny").config))


def test_config_roundtrip():
    from convnext.models import config_from_dict, config_to_dict

    for name in ["convnext_tiny", "convnext_isotropic_small", "convnextv2_atto"]:
        cfg = get_spec(name).config
        assert config_from_dict(config_to_dict(cfg)) == cfg
