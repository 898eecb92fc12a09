"""nnobs, the Neural Net Observatory: train a net in a detached worker, or your own loop, and watch and steer it live."""

__version__ = "0.1.0"
__all__ = ["Run", "RunBusy", "attach"]


def __getattr__(name: str):
    # Imported on first use: the CLI's launcher imports this package and must stay cheap.
    if name in __all__:
        from nnobs.training import sdk

        return getattr(sdk, name)
    raise AttributeError(f"module 'nnobs' has no attribute {name!r}")
