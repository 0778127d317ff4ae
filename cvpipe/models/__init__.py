"""Detection models written in plain PyTorch."""
