"""batchgen: generate image datasets through asynchronous image APIs, driven by YAML manifests."""

__version__ = "0.1.0"
