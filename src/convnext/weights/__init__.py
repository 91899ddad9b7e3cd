"""Weights: safe file I/O, layout conversion (official/timm/torchvision/HF/V2), loading, pretrained registry.

Public API (others code against these names):
    load_state_dict_file, save_state_dict, read_labels, read_metadata   -- io.py
    detect_layout, convert_state_dict, LAYOUTS                          -- convert.py
    load_checkpoint, LoadReport, from_checkpoint, checkpoint_config     -- loading.py
    load_pretrained, list_pretrained, get_pretrained                    -- pretrained.py
    read_dense_file, DenseFile (mmdet / mmseg / our dense files)        -- dense_files.py
"""
from .convert import LAYOUTS, convert_state_dict, detect_layout
from .dense_files import DenseFile, read_dense_file
from .io import CheckpointError, TRAIN_FORMAT, load_state_dict_file, read_labels, read_metadata, save_state_dict
from .loading import LoadReport, checkpoint_config, from_checkpoint, infer_config, load_checkpoint, match_model_name
from .pretrained import PretrainedWeights, get_pretrained, list_pretrained, load_pretrained

__all__ = [
    "CheckpointError", "DenseFile", "LAYOUTS", "LoadReport", "PretrainedWeights", "TRAIN_FORMAT", "checkpoint_config",
    "convert_state_dict",
    "detect_layout", "from_checkpoint", "get_pretrained", "infer_config", "list_pretrained", "load_checkpoint",
    "load_pretrained", "load_state_dict_file", "match_model_name", "read_dense_file", "read_labels", "read_metadata",
    "save_state_dict",
]
