"""The operator process: kopf handlers that are thin shells around core/."""
