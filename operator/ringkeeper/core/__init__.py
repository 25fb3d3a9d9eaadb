"""Pure decisions over plain data: no Kubernetes, database or HTTP imports here."""
