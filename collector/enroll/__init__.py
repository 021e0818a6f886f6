"""Enrollment (token + CSR, on the server-TLS listener) and renewal (on the mTLS port)."""
