//! IPv6 security-group map ABI. (Filled in by the security-group work.)
