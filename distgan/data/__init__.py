"""Datasets. MNIST is held as one uint8 tensor on the training device and cut into batches there."""
