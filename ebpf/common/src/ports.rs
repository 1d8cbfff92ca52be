//! External port choice (RFC 6056-style randomization, range and parity preservation).
