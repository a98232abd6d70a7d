"""Verifying a mirror against Dataverse: estimates, exact range counts, key/version diffs, repair.

Between runtime and mirror: it reads the source through the governed client and writes repairs
through the store's page writer, like a table job.
"""
