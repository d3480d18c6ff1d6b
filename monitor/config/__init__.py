"""The typed configuration (types.py) and its loader with key-path errors (loader.py); every stage reads it."""
