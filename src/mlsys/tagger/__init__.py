"""Garment tagging: categories and pattern tags from one photo."""
