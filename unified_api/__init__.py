"""The unified server (every component on one port) and `hatchery serve`."""
