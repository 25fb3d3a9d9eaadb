"""The only modules that talk to the outside world (Kubernetes, databases, HTTP)."""
