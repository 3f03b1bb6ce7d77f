"""One module per study; each declares its grid and calls the engine and plots."""
