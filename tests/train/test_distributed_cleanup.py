"""Tearing down the process group must not leave it alive in DTensor's global caches (FSDP runs)."""
import gc

import pytest
import torch
import torch.distributed as dist

from convnext.train.distributed import cleanup_distributed


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_cleanup_releases_every_device_mesh(tmp_path):
    from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    def meshes() -> int:
        gc.collect()
        return sum(isinstance(o, DeviceMesh) for o in gc.get_objects())

    before = meshes()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        x = distribute_tensor(torch.randn(4, 3), mesh, [Shard(0)])
        y = (x * 2 + x).sum()  # fills the sharding-propagation caches with specs that hold the mesh
        assert y.full_tensor().shape == ()
        del mesh, x, y  # from here on only torch's caches can hold the mesh (on torch 2.15 they do)
    finally:
        cleanup_distributed()
    assert not dist.is_initialized()
    assert meshes() == before
