"""The version of resnest_fast (setup.py reads it from here)."""
__version__ = "0.1.0"
