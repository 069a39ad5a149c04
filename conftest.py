"""Repository-wide pytest settings: the project's own tests use pytester."""
