"""Stand-in for ``sgm.modules.diffusionmodules`` (the real one re-exports samplers, wrappers …)."""
