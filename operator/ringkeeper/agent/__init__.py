"""The instance agent that runs in every database pod."""
