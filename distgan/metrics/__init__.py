"""Sample-quality metrics computed offline."""
