"""Ringkeeper's API types and the generator that turns them into CRDs."""
