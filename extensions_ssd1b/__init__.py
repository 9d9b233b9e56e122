"""sd-webui-ssd1b: distilled SDXL UNets (SSD-1B, Segmind-Vega, KOALA) for AUTOMATIC1111.

This package is host-free: nothing here imports the webui (``modules``), sgm or gradio at import
time.  :mod:`extensions_ssd1b.webui` is the one module that talks to the host, lazily.
"""

__version__ = "0.1.0"
