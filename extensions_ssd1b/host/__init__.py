"""The AUTOMATIC1111 adapter: the only package that imports the webui (always lazily), one module per pipeline step."""
