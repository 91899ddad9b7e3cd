"""The key-map engine every conversion uses (convnext/keymap.py): templates solved both ways."""
import pytest
import torch

from convnext.errors import CheckpointError
from convnext.keymap import KeyMap, Rule, translate_state_dict


def _double(t, to_ours, opts):
    return t * 2 if to_ours else t / 2


MAP = KeyMap("toy", (
    Rule("stem.{p}", "features.0.{p}"),  # specific first: stage 0 is the stem
    Rule("stages.{s}.{b}.conv{k}.weight", "layer{s+1}.{b}.conv{k}.weight"),
    Rule("stages.{s}.{b}.norm.{q}", "features.{s*2+1}.{b}.bn.{q}", _double),
    Rule("down.{s}.{p}", "features.{s*2}.{p}"),
))


def test_templates_are_solved_in_both_directions():
    assert MAP.translate("layer3.4.conv2.weight", to_ours=True)[0] == "stages.2.4.conv2.weight"
    assert MAP.translate("stages.2.4.conv2.weight", to_ours=False)[0] == "layer3.4.conv2.weight"
    assert MAP.translate("features.5.1.bn.running_var", to_ours=True)[0] == "stages.2.1.norm.running_var"
    assert MAP.translate("features.0.bias", to_ours=True)[0] == "stem.bias"  # first match wins
    assert MAP.translate("features.4.weight", to_ours=True)[0] == "down.2.weight"  # even index: downsampling
    assert MAP.translate("layer0.1.conv1.weight", to_ours=True) is None  # {s+1} cannot be 0
    assert MAP.translate("features.5.1.bn.scale", to_ours=True) is None  # {q} is a norm's tensor names only


def test_translate_applies_fixes_and_names_every_unmatched_key():
    sd = {"features.3.0.bn.weight": torch.ones(2), "layer1.0.conv1.weight": torch.zeros(1)}
    ours = translate_state_dict(sd, MAP, to_ours=True)
    assert torch.equal(ours["stages.1.0.norm.weight"], torch.full((2,), 2.0))
    back = translate_state_dict(ours, MAP, to_ours=False)
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)
    with pytest.raises(CheckpointError, match=r"2 tensor\(s\) have no counterpart: .*extra\.a"):
        translate_state_dict({**sd, "extra.a": torch.zeros(1), "extra.b": torch.zeros(1)}, MAP, to_ours=True)
