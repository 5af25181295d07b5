"""EmoGen: emotional speech generation and SER augmentation on Ray."""

__version__ = "0.1.0"
