"""HTTP layer: FastAPI only, never imports torch."""
