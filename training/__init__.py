"""training: arrives with its issue."""
