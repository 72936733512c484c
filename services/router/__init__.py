"""router: keeps the registry of live hosters, picks one per request and owns the request's lifecycle."""
