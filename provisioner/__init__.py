"""inletsctl: provisions exit servers for the inlets runtime."""
