"""Stand-in for Stability-AI/generative-models' ``sgm`` package (the commit A1111 pins, 45c443b3).

Only the UNet building blocks exist here: ``sgm.modules.attention``,
``sgm.modules.diffusionmodules.{openaimodel,util}`` and the two helpers they take from
``sgm.util``.  The real package imports its whole engine (models, samplers, Lightning) from this
file; the stand-in keeps it empty so tests need only torch.
"""
