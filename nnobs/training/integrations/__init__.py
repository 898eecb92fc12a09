"""Adapters that attach a framework's model and optimizer to nnobs.Run."""
