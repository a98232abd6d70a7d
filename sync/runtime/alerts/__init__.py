"""Alerts: webhooks told when syncing needs people (see sync.runtime.alerts.rules)."""
