"""medo1: train HuatuoGPT-o1-style medical reasoning models from raw data to a published model."""

__version__ = "0.1.0"
