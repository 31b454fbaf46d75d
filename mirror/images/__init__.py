"""Container images: reference rules, the list to mirror, and the skopeo-driven sync."""
