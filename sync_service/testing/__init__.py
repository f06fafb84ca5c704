"""What ships for tests and the demo: test doubles of the APIs the product talks to (Mailtrap,
HubSpot, Salesforce, Pipedrive) and the connector contract suite (like ``structlog.testing``).
Nothing in the product imports it but the demo."""
