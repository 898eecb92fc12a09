"""nnobs, the Neural Net Observatory: train a net in a detached worker and watch and steer it live."""

__version__ = "0.1.0"
