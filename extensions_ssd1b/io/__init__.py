"""Safetensors files: the validated header, the dtype table, streaming and reading tensor data, the one writer."""
