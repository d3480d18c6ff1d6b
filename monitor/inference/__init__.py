"""Stage 2, inference: the network, its artifacts and weights tooling, preprocessing, the classifier, the
worker that batches due frames, the result board and the overlay drawn from results."""
