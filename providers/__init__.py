"""Built-in provider declarations, one module each, registered through entry points."""
