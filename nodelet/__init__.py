"""nodelet: a kubelet-like node agent for static pods, with its own process runtime."""

__version__ = "0.1.0"
