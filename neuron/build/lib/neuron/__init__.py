"""helexa neuron: the per-host worker that supervises vLLM engines."""

__version__ = "0.1.0"
