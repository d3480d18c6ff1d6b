"""Stage 2, inference: the runtime artifacts, preprocessing, the classifier, the worker that batches due frames,
the result board and the custom heads (the overlay drawn from results is in monitor.render)."""
