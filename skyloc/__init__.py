"""skyloc: onboard drone localization without GNSS by cross-view image retrieval."""

__version__ = "0.1.0"
