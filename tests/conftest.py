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
