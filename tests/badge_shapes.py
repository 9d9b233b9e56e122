"""Header shapes the badge tests put beside a UNet (torch-free: the browser test runs in a slim Python)."""

TEXT_ENCODERS = {
    "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
    "conditioner.embedders.1.model.token_embedding.weight": (49408, 1280),
}
VAE = {
    "first_stage_model.decoder.conv_in.weight": (512, 4, 3, 3),
    "first_stage_model.post_quant_conv.weight": (4, 4, 1, 1),
    "first_stage_model.decoder.conv_out.weight": (3, 128, 3, 3),
}
