"""Stage 1, capture: cameras (one thread each), frame sources for the tools, the motion gate."""
