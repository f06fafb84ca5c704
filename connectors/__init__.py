"""Built-in connectors, registered in the ``sync_service.connectors`` entry-point group.

Each connector module holds a class implementing ``sync_service.connector.Connector`` and its
settings model (a ``ConnectorSettings`` subclass).
"""
