"""The model hijack, as in A1111's modules/sd_hijack.py (no prompt-weighting or attention optimisers).

``convert_sdxl_to_ssd`` exists from v1.7.0 and deletes exactly what the real one deletes, so it
raises AttributeError on a UNet that is already SSD-1B-shaped or smaller.
"""

from modules import _standin, devices


class _EmbeddingDatabase:
    """textual_inversion.EmbeddingDatabase: the stand-in never has embeddings."""

    def __init__(self):
        self.word_embeddings = {}

    def load_textual_inversion_embeddings(self, force_reload=False):
        pass


class StableDiffusionModelHijack:
    fixes = None
    layers = None
    circular_enabled = False
    clip = None
    optimization_method = None

    def __init__(self):
        self.extra_generation_params = {}
        self.comments = []

        self.embedding_db = _EmbeddingDatabase()

    def apply_optimizations(self, option=None):
        self.optimization_method = None

    if _standin.at_least("1.7.0"):
        def convert_sdxl_to_ssd(self, m):
            """Converts an SDXL model to a Segmind Stable Diffusion model (see https://huggingface.co/segmind/SSD-1B)"""

            delattr(m.model.diffusion_model.middle_block, '1')
            delattr(m.model.diffusion_model.middle_block, '2')
            for i in ['9', '8', '7', '6', '5', '4']:
                delattr(m.model.diffusion_model.input_blocks[7][1].transformer_blocks, i)
                delattr(m.model.diffusion_model.input_blocks[8][1].transformer_blocks, i)
                delattr(m.model.diffusion_model.output_blocks[0][1].transformer_blocks, i)
                delattr(m.model.diffusion_model.output_blocks[1][1].transformer_blocks, i)
            delattr(m.model.diffusion_model.output_blocks[4][1].transformer_blocks, '1')
            delattr(m.model.diffusion_model.output_blocks[5][1].transformer_blocks, '1')
            devices.torch_gc()

    def hijack(self, m):
        conditioner = getattr(m, 'conditioner', None)
        if conditioner:
            # real: wraps both text encoders (custom words, emphasis) and uses the conditioner as cond_stage_model
            m.cond_stage_model = conditioner

        self.apply_optimizations()

        self.clip = m.cond_stage_model

        def flatten(el):
            flattened = [flatten(children) for children in el.children()]
            res = [el]
            for c in flattened:
                res += c
            return res

        self.layers = flatten(m)

    def undo_hijack(self, m):
        conditioner = getattr(m, 'conditioner', None)
        if conditioner and hasattr(m, 'cond_stage_model'):
            delattr(m, 'cond_stage_model')

        self.apply_circular(False)
        self.layers = None
        self.clip = None

    def apply_circular(self, enable):
        if self.circular_enabled == enable:
            return

        self.circular_enabled = enable

    def clear_comments(self):
        self.comments = []
        self.extra_generation_params = {}

    def redo_hijack(self, m):
        self.undo_hijack(m)
        self.hijack(m)


model_hijack = StableDiffusionModelHijack()
