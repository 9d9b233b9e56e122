"""Where SDXL control models (ControlNet, T2I-Adapter, IP-Adapter, reference) meet a distilled UNet's blocks."""
