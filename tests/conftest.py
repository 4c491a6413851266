"""Shared by every test layer: this directory is on sys.path, so `h5files` imports."""
