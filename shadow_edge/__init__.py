"""shadow-edge: export, quantize and run ShadowPEFT models on CPUs and edge devices.

This package stays import-light: it must never pull torch or transformers, because
`shadow_edge.runtime` is shipped to devices that have neither.
"""

__version__ = "0.1.0"
