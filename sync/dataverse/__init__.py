"""The Dataverse Web API: pure OData rules (odata.py), response classification (classify.py)
and the aiohttp client (client.py)."""
