"""The layouts `convnext convert` writes, torch-free (`convnext convert --help` imports no torch)."""
LAYOUTS = ("official", "timm", "torchvision", "hf", "v2")
