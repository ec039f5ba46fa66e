"""Stores: where verified ciphertext lives. See ``base.Store`` for the seam."""
