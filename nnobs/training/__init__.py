"""Training a net while it is watched: the run session, trainers, nnobs.Run and the built-in worker."""
