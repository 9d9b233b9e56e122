"""A diffusers folder or UNet file turned into an LDM-named plan: which source tensors make each checkpoint tensor."""
