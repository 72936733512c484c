"""Messages between services, one module per bounded context, and the subjects they travel on."""
