"""What cortex knows about the fleet: neurons, the catalogue, and where each model is."""
