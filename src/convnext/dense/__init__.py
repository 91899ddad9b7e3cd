"""ConvNeXt as a backbone for dense prediction (PAPER.md §4.1-4.2): COCO detection / instance
segmentation (Mask R-CNN, Cascade Mask R-CNN) and ADE20K-style semantic segmentation (UperNet),
built on torchvision and plain PyTorch (no mmcv).

Models register themselves in the model registry when `convnext.dense.detection` and
`convnext.dense.segmentation` are imported (the registry loads both as plugins).
"""
