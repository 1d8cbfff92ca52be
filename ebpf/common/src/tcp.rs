//! TCP session states for NAT and security-group conntrack (RFC 7857 §2 / RFC 6146).
