"""Stage render (after inference): what a frame looks like to people. The overlay drawn from results, the one
JPEG encoder, and an event's picture rendered and encoded once for every consumer (snapshot file, MQTT)."""
