"""dvmirror: mirror Microsoft Dataverse tables of many tenants into a SQL database you own."""

__version__ = "0.1.0"
