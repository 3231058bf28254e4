"""The agents of the campaign pipeline, one module each, testable without the graph."""
