"""What one process hands another: the ring configuration the operator writes into a
Secret and the sync sidecar and verifier read, and the connection strings in it.

Shared as data contracts (models and builders), never as running code, so the operator
does not import the sidecar and the sidecar does not import the operator.
"""
