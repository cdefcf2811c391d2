"""A multi-user chat server over one continuously batched generation worker."""
