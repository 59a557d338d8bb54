"""Rating: plans, tariffs, prefix tries, time bands, zones and exact rounding."""
