"""Weights: safe file I/O, layout conversion (official/timm/torchvision/HF/V2), loading, pretrained registry.

Public API (others code against these names):
    load_state_dict_file, save_state_dict, read_labels, read_metadata   -- io.py
    detect_layout, convert_state_dict, LAYOUTS                          -- convert.py
    load_checkpoint, LoadReport, from_checkpoint, checkpoint_config     -- loading.py
    load_pretrained, list_pretrained, get_pretrained                    -- pretrained.py
    read_dense_file, DenseFile (mmdet / mmseg / our dense files)        -- dense_files.py
"""
from .._lazy import lazy_attributes

# Names are imported on first use (`convnext._lazy`): `convnext convert --help` imports no torch.
_PUBLIC: dict[str, str] = {
    **dict.fromkeys(("LAYOUTS",), "convnext.weights.layouts"),
    **dict.fromkeys(("convert_state_dict", "detect_layout"), "convnext.weights.convert"),
    **dict.fromkeys(("DenseFile", "read_dense_file"), "convnext.weights.dense_files"),
    **dict.fromkeys(("CheckpointError", "TRAIN_FORMAT", "load_state_dict_file", "read_labels", "read_metadata",
                     "save_state_dict"), "convnext.weights.io"),
    **dict.fromkeys(("LoadReport", "checkpoint_config", "from_checkpoint", "infer_config", "load_checkpoint",
                     "match_model_name"), "convnext.weights.loading"),
    **dict.fromkeys(("PretrainedWeights", "get_pretrained", "list_pretrained", "load_pretrained"),
                    "convnext.weights.pretrained"),
}

__all__ = sorted(_PUBLIC)
__getattr__, __dir__ = lazy_attributes(__name__, _PUBLIC)
