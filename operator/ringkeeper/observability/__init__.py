"""Every Prometheus metric Ringkeeper exports, defined once."""
