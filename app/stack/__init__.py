"""The local stack: install layout, generated configs, supervision."""
