"""helexa cortex: one OpenAI- and Anthropic-compatible API over a fleet of neurons."""

__version__ = "0.1.0"
