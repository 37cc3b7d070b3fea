"""One module per CLI command (the CLI layer). Each imports heavy packages inside its function."""
