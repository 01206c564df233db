"""faithclip: faithful explanations of CLIP models."""
__version__ = "0.1.0"
