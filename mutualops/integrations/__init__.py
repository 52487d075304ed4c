"""Drop-in use of mutualops inside other detection frameworks (one module each,
imported on demand so that the framework stays an optional dependency)."""
