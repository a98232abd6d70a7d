"""The request governor: one service-protection budget per application user."""
