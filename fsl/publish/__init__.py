"""Publishing studies: one command regenerates a results folder, its README rendered from its metrics."""
