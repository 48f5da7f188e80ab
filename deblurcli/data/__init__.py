"""Data: paired-dataset discovery, training datasets and the project's photo pool."""
