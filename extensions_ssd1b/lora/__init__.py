"""LoRA files on distilled SDXL UNets: key formats, layout-aware mapping, counts (host-free)."""
