"""carrierd: SMPP and +Message delivery engine for Japanese A2P messaging."""

__version__ = "0.1.0"
