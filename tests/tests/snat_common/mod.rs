//! The SNAT fixtures live in `podgate_tests::fixture` (the benchmark binary uses them too).
#![allow(unused_imports)]

pub use podgate_tests::fixture::*;
pub use podgate_tests::*;
