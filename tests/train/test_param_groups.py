import pytest
import torch

import convnext
from convnext.models import build_model, get_spec
from convnext.train.param_groups import layer_id, num_layer_groups, param_groups


def _meta(name, **overrides):
    import dataclasses

    with torch.device("meta"):
        return build_model(dataclasses.replace(get_spec(name).config, **overrides))


def official_layer_id(var_name: str) -> int:
    """The official ConvNeXt mapping (PAPER.md §3.2), written out independently for depth-27 stage 3."""
    if var_name.startswith("downsample_layers"):
        stage = int(var_name.split(".")[1])
        return {0: 0, 1: 2, 2: 3, 3: 12}[stage]
    if var_name.startswith("stages"):
        stage, block = int(var_name.split(".")[1]), int(var_name.split(".")[2])
        return {0: 1, 1: 2, 2: 3 + block // 3, 3: 12}[stage]
    return 13


@pytest.mark.parametrize("name", ["convnext_small", "convnext_base", "convnext_large", "convnext_xlarge"])
def test_layer_ids_match_official_mapping(name):
    model = _meta(name)
    assert num_layer_groups(model) == 14
    for n, _ in model.named_parameters():
        assert layer_id(n, model) == official_layer_id(n), n


def test_layer_ids_for_tiny_atto_and_isotropic():
    tiny = _meta("convnext_tiny")  # depths 3,3,9,3 -> stem 0, 1, 2, 3..5, 6, head 7
    assert num_layer_groups(tiny) == 8
    assert layer_id("downsample_layers.0.0.weight", tiny) == 0
    assert layer_id("stages.0.2.dwconv.weight", tiny) == 1
    assert layer_id("downsample_layers.1.1.weight", tiny) == 2
    assert layer_id("stages.2.8.gamma", tiny) == 5
    assert layer_id("downsample_layers.3.0.weight", tiny) == 6
    assert layer_id("head.weight", tiny) == layer_id("norm.weight", tiny) == 7

    atto = _meta("convnext_atto")  # depths 2,2,6,2 -> 0, 1, 2, 3..4, 5, head 6
    assert num_layer_groups(atto) == 7
    assert [layer_id(f"stages.2.{b}.pwconv1.weight", atto) for b in range(6)] == [3, 3, 3, 4, 4, 4]

    iso = _meta("convnext_isotropic_small")  # 18 blocks -> stem 0, blocks 1..6, head 7
    assert num_layer_groups(iso) == 8
    assert layer_id("stem.weight", iso) == 0
    assert [layer_id(f"blocks.{j}.dwconv.weight", iso) for j in (0, 2, 3, 17)] == [1, 1, 2, 6]
    assert layer_id("head.bias", iso) == 7


def test_every_registered_model_uses_every_group():
    for name in [n for n in convnext.list_models() if convnext.get_spec(n).task == "classification"]:  # dense: own groups
        model = _meta(name)
        ids = [layer_id(n, model) for n, _ in model.named_parameters()]
        assert sorted(set(ids)) == list(range(num_layer_groups(model))), name  # every group used, none skipped


def test_no_weight_decay_on_biases_norms_layer_scale_and_grn():
    model = convnext.create_model("convnext_atto", num_classes=10)
    groups = param_groups(model, weight_decay=0.05)
    decayed = {n for g in groups if g["weight_decay"] > 0 for n in g["names"]}
    plain = {n for g in groups if g["weight_decay"] == 0 for n in g["names"]}
    assert "stages.0.0.pwconv1.weight" in decayed and "head.weight" in decayed
    assert "stages.0.0.dwconv.weight" in decayed and "downsample_layers.0.0.weight" in decayed
    for n in ("stages.0.0.gamma", "stages.0.0.norm.weight", "head.bias", "norm.weight", "downsample_layers.0.1.weight"):
        assert n in plain
    assert decayed | plain == {n for n, _ in model.named_parameters()}

    v2 = convnext.create_model("convnextv2_atto", num_classes=10)
    plain = {n for g in param_groups(v2, 0.05) if g["weight_decay"] == 0 for n in g["names"]}
    assert "stages.0.0.grn.gamma" in plain and "stages.0.0.grn.beta" in plain


def test_layer_decay_scales():
    model = _meta("convnext_small")
    groups = param_groups(model, weight_decay=0.05, layer_decay=0.8)
    by_name = {n: g["lr_scale"] for g in groups for n in g["names"]}
    assert by_name["head.weight"] == 1.0
    assert by_name["downsample_layers.0.0.weight"] == pytest.approx(0.8**13)
    assert by_name["stages.2.26.pwconv2.weight"] == pytest.approx(0.8 ** (13 - 11))
    opt = torch.optim.AdamW(param_groups(convnext.create_model("convnext_atto", num_classes=3), 0.05, 0.7))
    assert {round(g["lr_scale"], 6) for g in opt.param_groups} == {round(0.7**k, 6) for k in range(7)}
