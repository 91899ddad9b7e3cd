"""`--loader device`: the decoded-once, batch-augmented pipeline inside the training loop."""
import json

import pytest
import torch

from convnext.errors import ConfigError
from convnext.train import load_config, run

TINY = {"stem_patch_size": 1, "depths": [1, 1], "dims": [8, 16]}


def cfg(tmp_path, name, **kw):
    base = dict(model_overrides=TINY, train_subset=96, batch_size=16, epochs=2, num_workers=0, threads=1,
                progress=False, output=str(tmp_path / name), seed=3, adapt=False, loader="device",
                randaug="rand-m9-mstd0.5-inc1", reprob=0.25, mixup=0.8, cutmix=1.0, drop_path=0.1)
    return load_config("digits", **{**base, **kw})


def test_device_loader_trains_records_itself_and_resumes_exactly(tmp_path, monkeypatch, interrupt_at_step):
    run(cfg(tmp_path, "full"))
    saved = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert saved["loader"] == "device" and saved["epochs"] == 2

    interrupt_at_step(8)  # Ctrl-C after optimizer step 8 (epoch 2, batch 2)
    with pytest.raises(KeyboardInterrupt):
        run(cfg(tmp_path, "cut"))
    monkeypatch.undo()
    run(cfg(tmp_path, "cut", resume="auto"))
    a = torch.load(tmp_path / "full" / "checkpoint-last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "checkpoint-last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_auto_keeps_the_pil_pipeline_on_cpu_and_bad_kinds_are_refused(tmp_path):
    assert run(cfg(tmp_path, "auto", loader="auto", epochs=1))["loader"] == "workers"
    with pytest.raises(ConfigError, match="--loader"):
        cfg(tmp_path, "x", loader="gpu")
    with pytest.raises(ConfigError, match="DALI"):
        run(cfg(tmp_path, "dali", loader="dali", epochs=1))


class _Pipeline:
    """Stands in for a DALI pipeline in `convnext.data.dali.LIVE_PIPELINES` (a weak set)."""


def test_loaders_pick_fork_or_spawn_when_iterated_not_when_built():
    """A loader built before the epoch's DALI pipeline exists must not fork beside it; and a pipeline
    left in reference-cycle garbage is collected in the parent, not by a forked worker (which hung
    in DALI's executor destructor)."""
    import gc

    from torch.utils.data import DataLoader

    from convnext.data import dali
    from convnext.train.trainer import _Loader

    gc.collect()
    loader = _Loader(DataLoader(list(range(4)), batch_size=2, num_workers=1))
    assert loader.loader.multiprocessing_context is None  # built with no pipeline alive: fork
    alive = _Pipeline()
    dali.LIVE_PIPELINES.add(alive)
    try:
        assert [b.tolist() for b in loader] == [[0, 1], [2, 3]]
        assert loader.loader.multiprocessing_context.get_start_method() == "spawn"
    finally:
        dali.LIVE_PIPELINES.discard(alive)
    garbage = _Pipeline()
    garbage.cycle = garbage  # freed only by the cycle collector
    dali.LIVE_PIPELINES.add(garbage)
    del garbage
    assert len(dali.LIVE_PIPELINES) == 1
    assert [b.tolist() for b in loader] == [[0, 1], [2, 3]]
    assert not dali.LIVE_PIPELINES and loader.loader.multiprocessing_context is None  # collected here, then fork
    assert [b.tolist() for b in _Loader(DataLoader(list(range(2)), batch_size=2))] == [[0, 1]]  # no workers
