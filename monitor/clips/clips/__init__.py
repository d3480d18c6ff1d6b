"""Event clips: the pre-roll ring's packets plus the live ones, remuxed into MP4 without re-encoding."""
