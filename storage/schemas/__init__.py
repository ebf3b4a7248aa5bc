"""
The declared schemas of the store's files: the alert packet's Avro schemas (``alert/``, data
files read by `skyblink.storage.alerts.schema`) and the Arrow schemas of its Parquet tables
(`skyblink.storage.schemas.tables`).
"""
