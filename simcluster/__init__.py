"""simcluster: local multi-rank clusters and tiny MiniMax-shaped models for tests."""
