"""mlsys: restaurant recommendation and garment tagging, trained and served end to end."""

__version__ = "0.1.0"
