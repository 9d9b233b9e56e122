"""Leaf modules every layer may import: typed errors, the settings as data, and the infotext format."""
