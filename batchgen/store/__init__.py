"""A run directory on disk: the state file (SQLite), the run lock, images and metadata."""
