"""Reading radiographs from disk and preparing them for the encoder."""
