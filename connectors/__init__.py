"""Built-in connectors, registered in the ``sync_service.connectors`` entry-point group.

Kept in the repository's top-level ``connectors/`` folder and installed as the package
``sync_service.connectors`` (see setup.py). Modules here import each other relatively
(``from .sql_settings import ...``) and import from the product only the connector API
(``sync_service.connector``, ``errors``, ``models``, ``units``); an import-linter contract in
pyproject.toml keeps them off the job, delivery, the state store and the Mailtrap client.

Each connector module holds a class implementing ``sync_service.connector.Connector`` and its
settings model (a ``ConnectorSettings`` subclass).
"""
