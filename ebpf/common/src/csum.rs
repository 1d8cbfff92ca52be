//! Internet checksum arithmetic (RFC 1071, incremental updates per RFC 1624).
