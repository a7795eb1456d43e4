"""HTTP blueprints, one per front door."""
