"""Load generators: each runs as its own process (pinned apart from the servers) and prints JSON."""
