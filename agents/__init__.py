"""agents: arrives with its issue."""
