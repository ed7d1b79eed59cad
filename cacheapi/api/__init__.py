"""The DRF face of a node: views, authentication, parsers, renderers, the exception handler and
the OpenAPI schema. Views are thin: they validate, call the router and render."""
