"""locopack: localize knowledge in text-to-image models and edit it in closed form."""

from .version import __version__

__all__ = ["__version__", "apply"]


def __getattr__(name: str):
    # ``locopack.apply`` without importing torch and diffusers for ``import locopack`` alone
    if name == "apply":
        from .hub.apply import apply

        return apply
    raise AttributeError(f"module 'locopack' has no attribute {name!r}")
