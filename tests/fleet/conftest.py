"""The fleet suite: several cortex replicas in front of several neurons (stand-in engines)."""
