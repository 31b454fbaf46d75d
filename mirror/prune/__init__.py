"""`mirror prune`: remove what is no longer configured (issue 11)."""
