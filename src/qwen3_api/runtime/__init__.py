"""The composition root: settings in, a serving engine out (model source, runtime choice, backend wiring)."""
