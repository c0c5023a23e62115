"""Engines: the only code that knows how vLLM is started and stopped."""

from neuron.engine.process import EngineProcess, engine_argv, engine_env

HARNESSES = ("vllm",)

__all__ = ["HARNESSES", "EngineProcess", "engine_argv", "engine_env"]
