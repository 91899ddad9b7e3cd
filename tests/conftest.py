import os
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data with the CIFAR-10 tarballs; tests using it skip where it is absent."""
    if not (SHARED_DATA / "cifar10-test-jpeg.tar.gz").exists():
        pytest.skip("../shared/data (CIFAR-10 JPEG tarballs) not available")
    return SHARED_DATA


os.environ.setdefault("CONVNEXT_NO_DOWNLOAD", "1")


@pytest.fixture
def interrupt_at_step(monkeypatch):
    """`arm(n)`: the next training run gets Ctrl-C right after optimizer step `n` (its `on_step` hook has run).

    `monkeypatch.undo()` (or the test's end) disarms it; shared by the loader tests that resume after a cut.
    """
    import convnext.train.trainer as trainer

    def arm(n: int) -> None:
        real = trainer.train_one_epoch

        def patched(model, batches, ctx, step):
            on_step = ctx.on_step

            def hook(s):
                on_step(s)
                if s["step"] == n:
                    raise KeyboardInterrupt

            ctx.on_step = hook
            try:
                return real(model, batches, ctx, step)
            finally:
                ctx.on_step = on_step

        monkeypatch.setattr(trainer, "train_one_epoch", patched)

    return arm


@pytest.fixture
def signal_after_loss(monkeypatch):
    """`arm(task_cls, "SIGINT"|"SIGTERM", at_call)`: this process gets the signal right after loss call `at_call`.

    The batch's forward has run (random numbers drawn, BatchNorm statistics moved), so the save must be the
    last step boundary's: the one path Ctrl-C and SIGTERM share.
    """
    import signal

    def arm(task_cls, signum: str, at_call: int) -> None:
        real, calls = task_cls.loss, {"n": 0}

        def patched(self, *args):
            out = real(self, *args)
            calls["n"] += 1
            if calls["n"] == at_call:
                os.kill(os.getpid(), getattr(signal, signum))
            return out

        monkeypatch.setattr(task_cls, "loss", patched)

    return arm


def checkpoint_tensors(path) -> dict:
    """Every tensor of a training checkpoint: the model's and the optimizer state's, by flat name."""
    ckpt = torch.load(path, weights_only=True)
    out = {f"model.{k}": v for k, v in ckpt["model"].items()}
    for pid, st in ckpt["optimizer"]["state"].items():
        out.update({f"optimizer.{pid}.{k}": v for k, v in st.items() if torch.is_tensor(v)})
    return out


@pytest.fixture
def all_tensors():
    """`checkpoint_tensors` as a fixture (conftest modules are not importable by name from every test folder)."""
    return checkpoint_tensors
