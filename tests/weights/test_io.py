"""Safe loading, file formats, checkpoint wrappers, strict loading and head re-initialisation."""
import os
import pickle

import pytest
import torch

from convnext import create_model  # builds and loads (convnext.models.create_model only builds)
from convnext.models import config_to_dict
from convnext.weights import (
    CheckpointError, TRAIN_FORMAT, from_checkpoint, infer_config, load_checkpoint, load_state_dict_file,
    match_model_name, read_labels, save_state_dict,
)

from .conftest import randomize_


class _Payload:
    """Unpickling this would run `touch <marker>`: the attack a weights-only loader must refuse."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_malicious_pickle_is_refused_and_never_executed(tmp_path, writer):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    if writer == "torch.save":
        torch.save({"model": {"head.weight": torch.zeros(1)}, "x": _Payload(marker)}, evil)
    else:
        evil.write_bytes(pickle.dumps(_Payload(marker), protocol=2))
    with pytest.raises(CheckpointError, match=r"evil\.pth: refused to load.*weights-only") as e:
        load_state_dict_file(evil)
    assert "posix.system" in str(e.value)  # names the blocked global
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(create_model("convnext_atto"), evil)
    assert not marker.exists()


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_state_dict_file(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_state_dict_file(tmp_path / "junk.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="safetensors"):
        load_state_dict_file(tmp_path / "junk.safetensors")
    torch.save({"epoch": 3}, tmp_path / "nosd.pt")
    with pytest.raises(CheckpointError, match="no state dict"):
        load_state_dict_file(tmp_path / "nosd.pt")


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_save_roundtrip_with_metadata(tmp_path, suffix):
    model = randomize_(create_model("convnext_atto", num_classes=3))
    labels = ["cat", "dog", "eel"]
    meta = {"model_config": config_to_dict(model.config), "labels": labels, "model_name": "convnext_atto"}
    path = save_state_dict(model.state_dict(), tmp_path / f"w{suffix}", metadata=meta)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # atomic: no temp file left behind
    sd = load_state_dict_file(path)
    assert sd.keys() == model.state_dict().keys()
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())
    assert read_labels(path) == labels
    rebuilt = from_checkpoint(path)
    assert rebuilt.config == model.config and rebuilt.checkpoint_info["labels"] == labels
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), model(x))


def test_official_wrappers_and_ema(tmp_path):
    model = create_model("convnext_atto")
    ema = randomize_(create_model("convnext_atto"))
    torch.save({"model": model.state_dict(), "model_ema": ema.state_dict(), "epoch": 299}, tmp_path / "ck.pth")
    fresh = create_model("convnext_atto")
    load_checkpoint(fresh, tmp_path / "ck.pth")
    assert torch.equal(fresh.head.weight, model.head.weight)
    load_checkpoint(fresh, tmp_path / "ck.pth", ema=True)
    assert torch.equal(fresh.head.weight, ema.head.weight)
    torch.save({"model": model.state_dict()}, tmp_path / "noema.pth")
    with pytest.raises(CheckpointError, match="model_ema"):
        load_checkpoint(fresh, tmp_path / "noema.pth", ema=True)
    # timm's train script: {"state_dict": ..., "state_dict_ema": ...}.
    torch.save({"state_dict": model.state_dict(), "state_dict_ema": ema.state_dict()}, tmp_path / "timm_train.pth")
    load_checkpoint(fresh, tmp_path / "timm_train.pth", ema=True)
    assert torch.equal(fresh.head.weight, ema.head.weight)
    # Lightning-style {"state_dict": ...} with a DDP "module." prefix.
    torch.save({"state_dict": {f"module.{k}": v for k, v in ema.state_dict().items()}}, tmp_path / "ddp.ckpt")
    assert load_checkpoint(create_model("convnext_atto"), tmp_path / "ddp.ckpt").layout == "official"


def test_training_checkpoint_rebuilds_without_guessing(tmp_path):
    # A non-registered architecture (stem patch 2, 3 stages) only the stored config can describe.
    model = randomize_(create_model("convnext_atto", num_classes=4, stem_patch_size=2, layer_scale_init_value=0.5))
    ema = randomize_(create_model("convnext_atto", num_classes=4, stem_patch_size=2, layer_scale_init_value=0.5))
    ckpt = {
        "format": TRAIN_FORMAT, "model": model.state_dict(), "model_ema": ema.state_dict(),
        "model_config": config_to_dict(model.config), "labels": list("abcd"), "train_config": {"lr": 4e-3},
        "epoch": 5, "step": 100, "optimizer": {"state": {}, "param_groups": []}, "metrics": {"acc1": 0.5},
    }
    torch.save(ckpt, tmp_path / "last.pt")
    x = torch.randn(1, 3, 32, 32)
    for use_ema, ref in [(False, model), (True, ema)]:
        rebuilt = from_checkpoint(tmp_path / "last.pt", ema=use_ema).eval()
        assert rebuilt.config.stem_patch_size == 2
        with torch.no_grad():
            assert torch.equal(rebuilt(x), ref(x))
    assert read_labels(tmp_path / "last.pt") == list("abcd")


@pytest.mark.parametrize("name", ["convnext_atto", "convnextv2_femto", "convnext_isotropic_small"])
def test_foreign_checkpoint_architecture_inferred(tmp_path, name):
    model = create_model(name, num_classes=21841 if name == "convnext_atto" else 1000)
    torch.save({"model": model.state_dict()}, tmp_path / "x.pth")  # no config stored
    rebuilt = from_checkpoint(tmp_path / "x.pth")
    assert rebuilt.checkpoint_info["model_name"] == name
    assert rebuilt.num_classes == model.num_classes
    assert infer_config(model.state_dict()) == model.config.__class__(**{**model.config.__dict__})
    assert match_model_name(infer_config(model.state_dict())) == name


def test_22k_head_into_1k_model_needs_reinit_head(tmp_path):
    src = randomize_(create_model("convnext_atto", num_classes=21841))
    torch.save({"model": src.state_dict()}, tmp_path / "22k.pth")
    with pytest.raises(CheckpointError, match="21841 classes, model has 10 classes.*reinit_head"):
        create_model("convnext_atto", num_classes=10, checkpoint=tmp_path / "22k.pth")
    head_init_scale = 0.001
    model = create_model("convnext_atto", num_classes=10, checkpoint=tmp_path / "22k.pth", reinit_head=True,
                         head_init_scale=head_init_scale)
    assert model.head.weight.shape == (10, 320)
    # A fresh head: trunc-normal(std .02) scaled by head_init_scale, zero bias.
    assert 0.8 < model.head.weight.std().item() / (0.02 * head_init_scale) < 1.2
    assert not model.head.bias.any()
    assert torch.equal(model.stages[3][1].pwconv2.weight, src.stages[3][1].pwconv2.weight)
    # Same width: reinit_head allows a mismatch but does not throw away a head that fits.
    same = create_model("convnext_atto", num_classes=21841)
    report = load_checkpoint(same, tmp_path / "22k.pth", reinit_head=True)
    assert not report.head_reinitialized and torch.equal(same.head.weight, src.head.weight)


def test_missing_and_unexpected_keys_are_reported():
    sd = create_model("convnext_atto").state_dict()
    del sd["stages.2.5.gamma"]
    sd["stages.2.6.gamma"] = torch.zeros(160)
    sd.update({f"extra.{i}.weight": torch.zeros(1) for i in range(20)})
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(create_model("convnext_atto"), sd)
    msg = str(e.value)
    assert "missing from the checkpoint (1)" in msg and "stages.2.5.gamma" in msg
    assert "unexpected in the checkpoint (21)" in msg and "extra.*.weight  (20 tensors" in msg
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_checkpoint(create_model("convnext_femto"), create_model("convnext_atto").state_dict())
    # Dense-prediction stage norms are not silently left at their initial values.
    with pytest.raises(CheckpointError, match=r"stage_norms\.\*\.weight"):
        load_checkpoint(create_model("convnext_atto", stage_norms=True), create_model("convnext_atto").state_dict())


def test_hf_style_directory(tmp_path):
    model = create_model("convnext_atto")
    save_state_dict(model.state_dict(), tmp_path / "model.safetensors")
    assert load_checkpoint(create_model("convnext_atto"), tmp_path).num_tensors == len(model.state_dict())


def test_unknown_layouts_are_named():
    from convnext.weights import convert_state_dict, detect_layout

    with pytest.raises(CheckpointError, match="unrecognised ConvNeXt state-dict layout.*fc.weight"):
        detect_layout({"fc.weight": torch.zeros(2, 2)})
    with pytest.raises(CheckpointError, match="<state dict>: unrecognised"):
        load_checkpoint(create_model("convnext_atto"), {"fc.weight": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match="dst='keras'"):
        convert_state_dict(create_model("convnext_atto").state_dict(), dst="keras")
    # A timm file with an extra tensor our layout cannot place is reported, not dropped.
    sd = convert_state_dict(create_model("convnext_atto").state_dict(), dst="timm")
    sd["head.pre_logits.fc.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="no official-layout equivalent: head.pre_logits.fc.weight"):
        convert_state_dict(sd)


def test_roadmap_training_checkpoint_roundtrip(tmp_path):
    # Roadmap networks (BatchNorm ResNet steps) have only our own layout: stored config + native keys.
    model = create_model("roadmap_r50_depthwise", num_classes=3, small_input=True).eval()
    torch.save({"format": TRAIN_FORMAT, "model": model.state_dict(), "model_config": config_to_dict(model.config),
                "model_name": "roadmap_r50_depthwise", "labels": list("abc")}, tmp_path / "rm.pt")
    rebuilt = from_checkpoint(tmp_path / "rm.pt").eval()
    assert rebuilt.checkpoint_info["layout"] == "native"
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
    fresh = create_model("roadmap_r50_depthwise", num_classes=3, small_input=True)
    assert load_checkpoint(fresh, tmp_path / "rm.pt").layout == "native"
    with pytest.raises(CheckpointError, match="classifier head"):
        load_checkpoint(create_model("roadmap_r50_depthwise", num_classes=5, small_input=True), tmp_path / "rm.pt")


def test_file_kind_sniffed_from_content(tmp_path):
    # A safetensors file without its extension is still read as safetensors; a text file is named as such.
    model = create_model("convnext_atto")
    save_state_dict(model.state_dict(), tmp_path / "w.safetensors")
    (tmp_path / "w.bin").write_bytes((tmp_path / "w.safetensors").read_bytes())
    assert torch.equal(load_state_dict_file(tmp_path / "w.bin")["head.weight"], model.head.weight)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint or a safetensors file"):
        load_state_dict_file(tmp_path / "notes.txt")


def dense_task_checkpoint(model) -> dict:
    """What the official detection / segmentation code saves (mmdet / mmseg): the backbone under
    `backbone.` with per-stage output norms `norm{i}`, no head norm or classifier, task heads beside."""
    sd = {"backbone." + k.replace("stage_norms.", "norm"): v for k, v in model.state_dict().items()
          if not k.startswith(("norm.", "head."))}
    sd["decode_head.conv_seg.weight"] = torch.randn(150, 512, 1, 1)
    sd["auxiliary_head.conv_seg.weight"] = torch.randn(150, 256, 1, 1)
    return {"meta": {"CLASSES": ("wall", "building"), "iter": 160000}, "state_dict": sd}


def test_dense_task_backbone_checkpoint(tmp_path):
    ref = randomize_(create_model("convnext_atto", stage_norms=True))
    path = tmp_path / "upernet_convnext_atto.pth"
    torch.save(dense_task_checkpoint(ref), path)
    x = torch.randn(1, 3, 64, 64)
    expected = ref.forward_intermediates(x)

    model = create_model("convnext_atto", checkpoint=path, stage_norms=True, reinit_head=True, num_classes=10)
    for a, b in zip(model.forward_intermediates(x), expected):
        torch.testing.assert_close(a, b)
    assert torch.equal(model.norm.weight, torch.ones(320)) and model.head.weight.shape == (10, 320)

    rebuilt = from_checkpoint(path)  # architecture, stage norms and "no classes" read from the tensors
    assert rebuilt.config.stage_norms and rebuilt.num_classes == 0
    assert rebuilt.checkpoint_info["model_name"] == "convnext_atto" and rebuilt.checkpoint_info["layout"] == "dense"
    for a, b in zip(rebuilt.forward_intermediates(x), expected):
        torch.testing.assert_close(a, b)

    with pytest.raises(CheckpointError, match="backbone without the head's LayerNorm"):
        create_model("convnext_atto", checkpoint=path, stage_norms=True)  # never a silent fresh head
    with pytest.raises(CheckpointError, match="build the model with stage_norms=True"):
        create_model("convnext_atto", checkpoint=path, reinit_head=True)


def fcmae_checkpoint(model) -> dict:
    """A ConvNeXt-V2 FCMAE pre-training checkpoint as the official code saves it: the sparse
    (MinkowskiEngine) encoder under `encoder.`, plus decoder / mask token / projection."""
    sd = {}
    for k, v in model.state_dict().items():
        if k.startswith(("norm.", "head.")):
            continue  # the encoder has no head
        if v.dim() == 4 and k.endswith("dwconv.weight"):  # (C, 1, k, k) -> (k*k, C), taps (w, h)
            k, v = k[: -len("weight")] + "kernel", v.transpose(2, 3).reshape(v.shape[0], -1).t()
        elif v.dim() == 4 and k.startswith("downsample_layers.") and not k.startswith("downsample_layers.0."):
            k, v = k[: -len("weight")] + "kernel", v.transpose(2, 3).reshape(v.shape[0], v.shape[1], -1).permute(2, 1, 0)
        elif ".grn." in k:
            v = v.reshape(1, -1)
        elif k.startswith("downsample_layers.") and not k.startswith("downsample_layers.0."):
            if k.split(".")[2] == "0":  # the LayerNorm before the strided conv
                k = k.replace(".0.", ".0.ln.", 1)
            else:
                v = v.reshape(1, -1)  # the strided conv's bias
        elif ".norm." in k:
            k = k.replace(".norm.", ".norm.ln.")
        elif ".pwconv" in k:
            k = k.replace(".weight", ".linear.weight").replace(".bias", ".linear.bias")
        elif k.endswith("dwconv.bias"):
            v = v.reshape(1, -1)
        sd["encoder." + k] = v.contiguous()
    sd.update({"mask_token": torch.zeros(1, 512, 1, 1), "proj.weight": torch.randn(512, 320, 1, 1),
               "decoder.0.dwconv.weight": torch.randn(512, 1, 7, 7), "pred.weight": torch.randn(3072, 512, 1, 1)})
    return {"model": sd}


def test_fcmae_pretraining_checkpoint(tmp_path):
    ref = randomize_(create_model("convnextv2_atto"))
    ckpt = fcmae_checkpoint(ref)
    assert any(k == "encoder.downsample_layers.1.0.ln.weight" for k in ckpt["model"])
    assert ckpt["model"]["encoder.stages.0.0.dwconv.kernel"].shape == (49, 40)
    assert ckpt["model"]["encoder.downsample_layers.1.1.kernel"].shape == (4, 40, 80)
    path = tmp_path / "convnextv2_atto_1k_224_fcmae.pt"
    torch.save(ckpt, path)

    model = create_model("convnextv2_atto", checkpoint=path, reinit_head=True, num_classes=10)
    x = torch.randn(1, 3, 64, 64)
    for a, b in zip(model.forward_intermediates(x, norm=False), ref.forward_intermediates(x, norm=False)):
        torch.testing.assert_close(a, b)
    rebuilt = from_checkpoint(path)
    info = rebuilt.checkpoint_info
    assert {k: info[k] for k in ("model_name", "labels", "layout", "train_config", "weights")} == {
        "model_name": "convnextv2_atto", "labels": None, "layout": "fcmae", "train_config": None, "weights": "model"}
    assert "re-initialised" in str(info["report"]) and "fcmae layout" in str(info["report"])


def test_saved_files_follow_the_umask(tmp_path):
    """`convnext convert` writes through save_state_dict: the file gets 0666 & ~umask, not mkstemp's 0600."""
    import os
    import stat

    import torch

    from convnext.weights.io import save_state_dict

    old = os.umask(0o022)
    try:
        for name in ("a.pth", "a.safetensors"):
            save_state_dict({"w": torch.zeros(2)}, tmp_path / name)
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644
    finally:
        os.umask(old)
