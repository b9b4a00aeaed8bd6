"""The model engine: model specs, loading, the continuous-batching engine and role routing."""
