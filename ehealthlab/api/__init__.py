"""The HTTP API: `create_app(settings)`, problem details, and who may call what."""
