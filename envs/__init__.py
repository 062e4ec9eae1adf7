"""poa-gym package."""
