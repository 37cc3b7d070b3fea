"""The training engine: model building, the log-prob forward, loss and metrics of a batch, the
loop, evaluation and checkpoints. Submodules import torch; this package file imports nothing."""
