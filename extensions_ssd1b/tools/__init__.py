"""The command line without the webui: ``inspect`` (report), ``verify``, ``convert``, and sample checkpoints."""
