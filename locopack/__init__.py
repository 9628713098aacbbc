"""locopack: localize knowledge in text-to-image models and edit it in closed form."""

__version__ = "0.1.0"
