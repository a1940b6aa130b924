"""Readings of what RL changed that need no dictionary: amplified sampling, patchscopes of
difference vectors, principal components of the activation differences, and topics of the
tokens whose next-token distribution changed most."""
