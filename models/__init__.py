"""The models: specs and roles, loading, the continuous-batching engine, and the daemon that holds
the engines for every editor window, with its socket protocol and client."""
