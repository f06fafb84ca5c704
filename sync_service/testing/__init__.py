"""What ships for tests and the demo: test doubles and kits (never imported by the product)."""
