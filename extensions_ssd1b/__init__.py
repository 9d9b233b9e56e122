"""sd-webui-ssd1b: distilled SDXL UNets (SSD-1B, Segmind-Vega, KOALA) for AUTOMATIC1111.

Layers, each importing only those before it: ``core`` (errors, settings, infotext) ← ``io`` (safetensors
files) ← ``arch`` (layouts, families, detection) ← ``diffusers`` (folder → LDM plan) ← ``vae`` and
``tools`` (the command line) ← ``host`` (the webui adapter, which imports the webui lazily).
"""

__version__ = "0.1.0"
