"""Base models: the in-memory bundle of diffusers/transformers components every layer uses."""
