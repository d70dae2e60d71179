"""Small helpers every layer uses: atomic files and digests, seeded generators, unit vectors, images."""
