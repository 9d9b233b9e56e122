"""What an SDXL-family checkpoint is: UNet layout, the family table, components, detection and classification."""
