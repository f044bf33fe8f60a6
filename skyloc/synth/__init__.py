"""Synthetic worlds: procedural georeferenced orthophotos and rendered drone views (numpy/OpenCV)."""
