"""The built-in local Kubernetes: a real control plane and a process runtime for its Node."""
