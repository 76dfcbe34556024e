"""Vendor root certificates embedded in the package; each format module pins its roots by SHA-256."""
