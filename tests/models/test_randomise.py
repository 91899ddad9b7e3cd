"""`convnext.testing.randomise_`: every floating tensor redrawn, deterministically, with the documented ranges."""
import torch

import convnext
from convnext.testing import randomise_


def test_every_float_tensor_is_redrawn_deterministically():
    a = randomise_(convnext.create_model("upernet_convnext_atto", num_classes=5), seed=3)
    b = randomise_(convnext.create_model("upernet_convnext_atto", num_classes=5), seed=3)
    fresh = convnext.create_model("upernet_convnext_atto", num_classes=5).state_dict()
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    floats = [k for k, v in fresh.items() if v.is_floating_point()]
    assert all(not torch.equal(sa[k], fresh[k]) for k in floats)  # nothing kept its initial value
    var = [v for k, v in sa.items() if k.endswith("running_var")]
    gamma = [v for k, v in sa.items() if k.endswith(".gamma")]
    assert var and all(0.5 <= v.min() and v.max() <= 1.5 for v in var)
    assert gamma and all(0.5 <= g.min() and g.max() <= 1.0 for g in gamma)
    assert all(torch.equal(sa[k], fresh[k]) for k in fresh if not fresh[k].is_floating_point())
