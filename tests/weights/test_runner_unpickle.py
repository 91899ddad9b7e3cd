"""OpenMMLab Runner checkpoints are read without running anything they contain; other files that
carry Python objects stay refused."""
import os
import pickle
import sys
import types

import numpy as np
import pytest
import torch

from convnext.models import create_model
from convnext.weights import CheckpointError, load_state_dict_file
from convnext.weights.io import read_checkpoint
from convnext.weights.runner_unpickle import Placeholder, placeholder_names, restricted_load


class _Payload:
    """Unpickling this would run `touch <marker>`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def fake_mmengine(monkeypatch):
    """A class importable as mmengine.logging.history_buffer.HistoryBuffer while the file is written."""
    class HistoryBuffer:
        def __init__(self):
            self.max_length = 1000000
            self._log_history = np.array([0.5, 0.25])
            self._count_history = np.array([1, 1])

    HistoryBuffer.__module__, HistoryBuffer.__qualname__ = "mmengine.logging.history_buffer", "HistoryBuffer"
    for name in ("mmengine", "mmengine.logging", "mmengine.logging.history_buffer"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    sys.modules["mmengine.logging.history_buffer"].HistoryBuffer = HistoryBuffer
    return HistoryBuffer


def _runner_file(path, sd, marker, history_buffer):
    torch.save({"meta": {"dataset_meta": {"classes": ("cat", "dog")}, "epoch": 12},
                "state_dict": sd,
                "message_hub": {"log_scalars": {"train/loss": history_buffer()},
                                "runtime_info": {"payload": _Payload(marker)}},
                "optimizer": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 0.1}]}}, path)


def test_runner_file_state_dict_comes_out_and_the_payload_never_runs(tmp_path, fake_mmengine, capsys):
    marker = tmp_path / "pwned"
    model = create_model("convnext_atto")
    path = tmp_path / "epoch_12.pth"
    _runner_file(path, model.state_dict(), marker, fake_mmengine)
    with pytest.raises(pickle.UnpicklingError):  # what weights_only=True says about it
        torch.load(path, weights_only=True)
    sys.modules.pop("mmengine.logging.history_buffer")  # the reader never needs (nor imports) mmengine

    ckpt = read_checkpoint(path)
    err = capsys.readouterr().err
    assert "inert placeholders" in err and "mmengine.logging.history_buffer.HistoryBuffer" in err
    assert "nothing from the file was executed" in err
    sd = load_state_dict_file(path)
    assert sd.keys() == model.state_dict().keys()
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())
    assert ckpt["meta"]["dataset_meta"]["classes"] == ("cat", "dog")
    payload = ckpt["message_hub"]["runtime_info"]["payload"]
    assert isinstance(payload, Placeholder) and payload.qualname in ("posix.system", "nt.system")
    assert payload.args == (f"touch {marker}",)  # recorded, never called
    buffer = ckpt["message_hub"]["log_scalars"]["train/loss"]
    assert buffer.qualname == "mmengine.logging.history_buffer.HistoryBuffer"
    assert not marker.exists()


def test_restricted_load_resolves_only_the_allow_list(tmp_path):
    path = tmp_path / "x.pth"
    marker = tmp_path / "pwned"
    torch.save({"t": torch.arange(3), "od": __import__("collections").OrderedDict(a=1), "size": torch.Size([2]),
                "dtype": torch.float16, "evil": [_Payload(marker)], "fn": os.getcwd}, path)
    obj, replaced = restricted_load(path)
    assert torch.equal(obj["t"], torch.arange(3)) and obj["od"] == {"a": 1} and obj["size"] == torch.Size([2])
    assert obj["dtype"] is torch.float16
    assert {"posix.system", "posix.getcwd"} <= set(replaced) or {"nt.system", "nt.getcwd"} <= set(replaced)
    assert isinstance(obj["fn"], type) and issubclass(obj["fn"], Placeholder)  # a global, not called
    assert placeholder_names(obj) >= {next(n for n in replaced if n.endswith(".system"))}
    assert not marker.exists()


def test_other_files_carrying_objects_stay_refused(tmp_path, fake_mmengine):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"model": {"head.weight": torch.zeros(1)}, "x": _Payload(marker)}, evil)  # not a Runner file
    with pytest.raises(CheckpointError, match=r"refused to load.*posix\.system|refused to load.*nt\.system"):
        read_checkpoint(evil)
    # a Runner-shaped file whose state dict is not plain tensors is refused too
    odd = tmp_path / "odd.pth"
    torch.save({"meta": {}, "state_dict": {"w": fake_mmengine()}}, odd)
    with pytest.raises(CheckpointError, match="refused to load"):
        read_checkpoint(odd)
    assert not marker.exists()
