"""Data verification between ring members: chunked checksums, bisection, repair."""
